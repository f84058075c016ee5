//! Every reason a user can see on a condition (`Ready`, `Synced`,
//! `Isolated`, `OrganizationReady`, `Provisioned`) or an Event, in one
//! place. `docs/reasons.md` says for each where it shows and what to do;
//! keep the two together. A reason is part of the API: tools match on it
//! (`kubectl wait --for=jsonpath=...reason=...`, alerts), so one is never
//! renamed, and a value means the same wherever it appears.

// --- Every kind -----------------------------------------------------------

/// Ready=True: the external object is serving.
pub const AVAILABLE: &str = "Available";
/// Ready=True with ObserveOnly: observed, never written.
pub const OBSERVED: &str = "Observed";
/// Ready=False while a create or update is under way (Fly Managed
/// Postgres: while Fly builds the cluster, its status in the message).
pub const CREATING: &str = "Creating";
/// Ready=False: a dependency is not ready yet.
pub const WAITING: &str = "Waiting";
/// Synced=True: the last reconcile succeeded.
pub const RECONCILE_SUCCESS: &str = "ReconcileSuccess";
/// Synced=False: the last reconcile failed (message says why).
pub const RECONCILE_ERROR: &str = "ReconcileError";
/// Synced=False: bulkhead.dev/paused is "true".
pub const RECONCILE_PAUSED: &str = "ReconcilePaused";
/// Synced=False: the provider cannot be reached or refuses service.
pub const PROVIDER_UNAVAILABLE: &str = "ProviderUnavailable";
/// Synced=False: the provider's credentials Secret is missing or unusable.
pub const CREDENTIALS_UNAVAILABLE: &str = "CredentialsUnavailable";
/// Synced=False: ObserveOnly and nothing exists to observe.
pub const EXTERNAL_MISSING: &str = "ExternalObjectMissing";
/// Synced=False: a create may have happened but cannot be confirmed.
pub const CREATE_PENDING_UNRESOLVED: &str = "CreatePendingUnresolved";
/// Synced=False: the spec asks for something the provider cannot do.
pub const UNSUPPORTED: &str = "Unsupported";
/// Synced=False: the spec is invalid in a way the schema cannot say.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// Synced=False/Ready=False: the isolation policy stops provisioning.
pub const ISOLATION_VIOLATED: &str = "IsolationViolated";
/// Synced=False: the operator lacks a Kubernetes right it needs.
pub const FORBIDDEN: &str = "Forbidden";

// --- Events of what happened at the provider --------------------------------

/// Event: the external object was created (also Provisioned=True of a
/// DatabaseCluster bulkhead created).
pub const CREATED: &str = "Created";
/// Event: the external object was brought back to the spec.
pub const UPDATED: &str = "Updated";
/// Event: the external object was deleted (deletionPolicy Delete).
pub const DELETED: &str = "Deleted";
/// Event: the external object was left in place (deletionPolicy Orphan,
/// or ObserveOnly).
pub const ORPHANED: &str = "Orphaned";

// --- Organization ------------------------------------------------------------

/// Event: a member's `expiresAt` passed; they were removed.
pub const MEMBER_EXPIRED: &str = "MemberExpired";
/// Event: a token of `spec.tokens` was minted into its Secret.
pub const TOKEN_MINTED: &str = "TokenMinted";
/// Event: a token left `spec.tokens` (or was replaced) and was revoked.
pub const TOKEN_REVOKED: &str = "TokenRevoked";
/// Another, older Organization already claims this slug at the provider.
pub const SLUG_CONFLICT: &str = "SlugConflict";
/// Synced=False: a Secret bulkhead would write (a token's `secretRef`, a
/// DatabaseCluster's connection or credentials Secret) exists and bulkhead
/// did not make it; it is never overwritten, adopted or deleted.
pub const SECRET_CONFLICT: &str = "SecretConflict";

// --- Environment -----------------------------------------------------------

/// OrganizationReady=False: `spec.organizationRef` names no Organization.
pub const ORGANIZATION_NOT_FOUND: &str = "OrganizationNotFound";
/// OrganizationReady=False: the Organization is not Ready (a Fly
/// DatabaseCluster: the Environment has no Fly organization slug yet).
pub const ORGANIZATION_NOT_READY: &str = "OrganizationNotReady";
/// OrganizationReady=True.
pub const ORGANIZATION_READY: &str = "OrganizationReady";
/// Isolated=True: no production/non-production sharing.
pub const ISOLATED: &str = "Isolated";
/// Isolated=False: production and non-production share an Organization.
pub const SHARED_ORGANIZATION: &str = "SharedOrganization";
/// Isolated=False: production and non-production share a namespace.
pub const SHARED_NAMESPACE: &str = "SharedNamespace";
/// Production and non-production databases on one server or credentials.
pub const SHARED_DATABASE_SERVER: &str = "SharedDatabaseServer";
/// Synced=False: `spec.promotion.from` names no Environment.
pub const PROMOTION_SOURCE_NOT_FOUND: &str = "PromotionSourceNotFound";
/// Synced=False: `spec.promotion.from` is not a lower tier.
pub const PROMOTION_DOWNWARD: &str = "PromotionDownward";
/// Synced=False: the namespace belongs to another Environment.
pub const NAMESPACE_TAKEN: &str = "NamespaceTaken";
/// A namespace bulkhead never manages (`kube-*`, `default`, the
/// operator's own, the configured deny-list).
pub const NAMESPACE_FORBIDDEN: &str = "NamespaceForbidden";
/// A namespace bulkhead did not create, without the opt-in label.
pub const NAMESPACE_NOT_OPTED_IN: &str = "NamespaceNotOptedIn";
/// The opt-in label of a namespace names another Environment.
pub const NAMESPACE_OPTED_IN_ELSEWHERE: &str = "NamespaceOptedInElsewhere";
/// Event: an access grant's `expiresAt` passed; it was removed.
pub const ACCESS_EXPIRED: &str = "AccessExpired";

// --- DatabaseCluster ---------------------------------------------------------

/// Synced=False: no Environment owns the namespace.
pub const NO_ENVIRONMENT: &str = "NoEnvironment";
/// spec.environmentRef names another Environment than the one owning
/// the namespace.
pub const ENVIRONMENT_MISMATCH: &str = "EnvironmentMismatch";
/// Synced=False: waiting for the Environment (or its Organization).
pub const ENVIRONMENT_NOT_READY: &str = "EnvironmentNotReady";
/// Ready=False: fewer nodes ready than `size.replicas`.
pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
/// Provisioned=True: the cluster existed before bulkhead looked.
pub const EXISTS: &str = "Exists";
/// In-cluster: CloudNativePG reports the Cluster not ready (its phase
/// is in the message), or a database it manages not created yet.
pub const CLUSTER_NOT_READY: &str = "ClusterNotReady";
/// In-cluster: CloudNativePG's CRDs are not installed.
pub const CLOUDNATIVEPG_NOT_INSTALLED: &str = "CloudNativePGNotInstalled";
/// Synced=False: copies flow only from a higher tier to a lower one.
pub const COPY_UPWARD: &str = "CopyUpward";
/// The source does not allow copies into this Environment (or does not
/// exist: the two are not told apart, so nothing leaks about other
/// namespaces).
pub const COPY_NOT_ALLOWED: &str = "CopyNotAllowed";
/// A Sanitized copy with no rule at all, which the source does not allow.
pub const SANITIZE_RULES_MISSING: &str = "SanitizeRulesMissing";
/// Event: a copy finished (tables, rows).
pub const COPIED: &str = "Copied";

// --- The postgres provider: names and copies on a shared server -------------

/// A database or role name would exceed PostgreSQL's 63 bytes.
pub const NAME_TOO_LONG: &str = "NameTooLong";
/// A database or role name PostgreSQL cannot take.
pub const INVALID_NAME: &str = "InvalidName";
/// The name is held on the server by another owner.
pub const NAME_CONFLICT: &str = "NameConflict";
/// A sanitize rule names a table the source does not have.
pub const UNKNOWN_TABLE: &str = "UnknownTable";
/// A sanitize rule names a column the table does not have.
pub const UNKNOWN_COLUMN: &str = "UnknownColumn";
/// A mask that does not apply to the column's type.
pub const UNSUPPORTED_MASK: &str = "UnsupportedMask";
/// Columns that look like personal data or secrets are neither masked,
/// excluded nor listed in the source's `safeColumns`.
pub const SENSITIVE_COLUMNS_UNMASKED: &str = "SensitiveColumnsUnmasked";
/// The source's schema has something a copy cannot carry.
pub const UNSUPPORTED_SCHEMA: &str = "UnsupportedSchema";
/// A mask's values would break a constraint of the column.
pub const MASK_VIOLATES_CONSTRAINT: &str = "MaskViolatesConstraint";
/// The copy's source databases do not exist yet.
pub const SOURCE_NOT_READY: &str = "SourceNotReady";
/// The copy's target databases do not exist yet.
pub const TARGET_NOT_READY: &str = "TargetNotReady";
/// The server is busy (too many connections, a lock held); retried.
pub const DATABASE_BUSY: &str = "DatabaseBusy";
/// Another server error that may pass; retried.
pub const DATABASE_ERROR: &str = "DatabaseError";

// --- The fly provider ------------------------------------------------------

/// Fly refused the credentials (HTTP 401 / UNAUTHORIZED): terminal
/// until the credentials Secret changes.
pub const CREDENTIALS_REJECTED: &str = "CredentialsRejected";
/// The credentials are valid but may not do what was asked (also the
/// PostgreSQL server refusing the admin role an operation).
pub const PERMISSION_DENIED: &str = "PermissionDenied";
/// Fly rejected the request's input (a GraphQL VALIDATION error).
pub const REQUEST_REJECTED: &str = "ProviderRequestRejected";
/// Fly answered something bulkhead did not expect: a GraphQL document
/// Fly does not accept, or an answer of the wrong shape.
pub const UNEXPECTED_RESPONSE: &str = "ProviderUnexpectedResponse";
/// Fly asked bulkhead to slow down and the retries ran out.
pub const RATE_LIMITED: &str = "ProviderRateLimited";
/// A Fly error that may go away on its own.
pub const PROVIDER_ERROR: &str = "ProviderError";
/// `spec.version` is a major Managed Postgres does not offer.
pub const UNSUPPORTED_VERSION: &str = "UnsupportedVersion";
/// Fly reports the Managed Postgres cluster failed.
pub const PROVISIONING_FAILED: &str = "ProvisioningFailed";
/// Managed and flex: the cluster runs another PostgreSQL major than
/// `spec.version`; Fly has no in-place major upgrade.
pub const MAJOR_VERSION_FIXED: &str = "MajorVersionFixed";
/// Fly: an Environment's `spec.network.name` differs from the network it
/// was bound to, or a flex app exists on another network than its
/// Environment's; Fly cannot move an app between networks.
pub const NETWORK_FIXED: &str = "NetworkFixed";
/// Flex: the app name is held by another Fly organization.
pub const APP_NAME_TAKEN: &str = "AppNameTaken";

#[cfg(test)]
mod tests {
    /// Every reason this module defines has its row in `docs/reasons.md`,
    /// so the page users read cannot fall behind the code.
    #[test]
    fn every_reason_is_documented() {
        let docs = include_str!("../docs/reasons.md");
        let undocumented: Vec<&str> = include_str!("reasons.rs")
            .lines()
            .filter(|l| l.starts_with("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .filter(|reason| !docs.contains(&format!("`{reason}`")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "reasons missing from docs/reasons.md: {undocumented:?}"
        );
    }

    /// Every reason this module defines is given somewhere in the code, so
    /// the page users read lists no reason they can never see.
    #[test]
    fn every_reason_is_used() {
        let mut code = String::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("src/reasons.rs")
                {
                    code.push_str(&std::fs::read_to_string(&path).expect("source is readable"));
                }
            }
        }
        let unused: Vec<&str> = include_str!("reasons.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split(':').next())
            .filter(|name| !code.contains(&format!("reasons::{name}")))
            .collect();
        assert!(unused.is_empty(), "reasons nothing gives: {unused:?}");
    }
}
