//! The external-client shape every backend implements, after Crossplane's
//! managed resources: a backend knows how to *look* (`observe`) and *act*
//! (`create`, `update`, `delete`, all idempotent); the reconciler in
//! `reconcile::managed` decides *when*.
//!
//! Controllers turn a custom resource and its parents into a plain
//! `Desired…` value (names resolved, defaults applied, secrets read), so a
//! backend never reads the Kubernetes object itself.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::api::database_cluster::{
    CopyMode, DatabaseSpec, Endpoint, ResolvedSize, Sanitize, UserSpec,
};
use crate::api::environment::{AccessGrant, EnvironmentConfig, Tier};
use crate::api::organization::{Billing, Member, MemberStatus, TokenSpec, TokenStatus};

pub mod cloudnativepg;
pub mod fly;
pub mod kubernetes;
pub mod postgres;

/// How a provider call failed, which decides what the reconciler does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying soon (conflict, timeout, rate limit): per-object backoff.
    #[error("{message}")]
    Transient {
        reason: &'static str,
        message: String,
    },
    /// Retrying will not help until the spec (or something it points at)
    /// changes: reported as a condition, no hot loop.
    #[error("{message}")]
    Terminal {
        reason: &'static str,
        message: String,
    },
    /// The backend cannot be reached or refuses service: Synced=False with
    /// ProviderUnavailable and backoff; recovers on its own.
    #[error("{message}")]
    Unavailable { message: String },
}

impl ProviderError {
    pub fn transient(reason: &'static str, message: impl Into<String>) -> Self {
        ProviderError::Transient {
            reason,
            message: message.into(),
        }
    }
    pub fn terminal(reason: &'static str, message: impl Into<String>) -> Self {
        ProviderError::Terminal {
            reason,
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ProviderError::Unavailable {
            message: message.into(),
        }
    }

    /// The CamelCase reason a condition shows for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::Transient { reason, .. } | ProviderError::Terminal { reason, .. } => {
                reason
            }
            ProviderError::Unavailable { .. } => crate::reasons::PROVIDER_UNAVAILABLE,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, ProviderError::Terminal { .. })
    }
}

/// Whether the external object is serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// CamelCase reason for Ready.
    pub reason: &'static str,
    pub message: String,
}

impl Readiness {
    pub fn ready(message: impl Into<String>) -> Self {
        Readiness {
            ready: true,
            reason: crate::reasons::AVAILABLE,
            message: message.into(),
        }
    }
    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Readiness {
            ready: false,
            reason,
            message: message.into(),
        }
    }
}

/// What `observe` found.
#[derive(Clone, Debug)]
pub enum Observation<O> {
    /// Nothing at the provider under the desired external name.
    Missing,
    /// The external object exists.
    Exists {
        /// `false` when an `update` is needed to converge it.
        up_to_date: bool,
        /// What differs, for the event and the log (never secret values).
        drift: Vec<String>,
        readiness: Readiness,
        observed: O,
    },
}

/// What [`ExternalClient::observe`] returns for a client `C`.
pub type Observed<C> = Result<Observation<<C as ExternalClient>::Observed>, ProviderError>;

/// One backend's client for one kind.
#[async_trait]
pub trait ExternalClient: Send + Sync {
    type Desired: Send + Sync;
    type Observed: Send + Sync;

    /// Looks at the provider. Never writes.
    async fn observe(&self, desired: &Self::Desired) -> Observed<Self>;
    /// Creates the external object. Must be safe to call again after a crash
    /// (create what is missing, leave what exists).
    async fn create(&self, desired: &Self::Desired) -> Result<(), ProviderError>;
    /// What the reconciler calls to create: [`ExternalClient::create`], plus
    /// the external name the provider chose, for backends whose provider
    /// picks names (`deterministic_names() == false`). The reconciler
    /// records that name as `bulkhead.dev/external-name` instead of the one
    /// it asked for. `None` (the default): the name asked for stands.
    async fn create_named(&self, desired: &Self::Desired) -> Result<Option<String>, ProviderError> {
        self.create(desired).await.map(|()| None)
    }
    /// Converges an existing external object to `desired`.
    async fn update(
        &self,
        desired: &Self::Desired,
        observed: &Self::Observed,
    ) -> Result<(), ProviderError>;
    /// Deletes the external object; succeeds when it is already gone.
    async fn delete(&self, desired: &Self::Desired) -> Result<(), ProviderError>;
    /// Whether the external name is chosen by us (so after a crash between a
    /// create-pending write and the create, `observe` alone tells whether the
    /// create happened). Backends whose provider picks the name return false,
    /// and the reconciler then refuses to create blindly.
    fn deterministic_names(&self) -> bool {
        true
    }
    /// Detaches what the backend made in the cluster from the Kubernetes
    /// object, so garbage collection leaves it (deletionPolicy Orphan, or
    /// ObserveOnly). Backends that keep nothing in the cluster have nothing
    /// to detach.
    async fn orphan(&self, desired: &Self::Desired) -> Result<(), ProviderError> {
        let _ = desired;
        Ok(())
    }
}

/// Organization backends.
pub trait OrganizationClient:
    ExternalClient<Desired = DesiredOrganization, Observed = ObservedOrganization>
{
    /// Whether the backend mints the tokens of `spec.tokens`.
    fn mints_tokens(&self) -> bool {
        false
    }
}

/// Identity of the Kubernetes object a desired state was built from, for
/// owner references and labels on in-cluster children.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    /// Namespace for namespaced kinds.
    pub namespace: Option<String>,
}

/// An Organization with its references resolved.
#[derive(Clone, Debug)]
pub struct DesiredOrganization {
    pub owner: Owner,
    pub slug: String,
    pub display_name: Option<String>,
    /// Members whose access has not expired.
    pub members: Vec<Member>,
    pub billing: Option<Billing>,
    /// Environments bound to the organization.
    pub environments: Vec<String>,
    /// The `bulkhead.dev/external-name` recorded on the object: where a
    /// backend whose provider picks names finds what it created (or what
    /// an ObserveOnly object adopts). `None` before the first create.
    pub external_name: Option<String>,
    /// `spec.tokens`, for backends that mint tokens.
    pub tokens: Vec<TokenSpec>,
}

/// What a backend reports about an Organization.
#[derive(Clone, Debug, Default)]
pub struct ObservedOrganization {
    pub external_id: Option<String>,
    pub members: Vec<MemberStatus>,
    /// The slug at the provider, when the provider picked it.
    pub slug: Option<String>,
    /// The minted tokens (names, Secrets, issue and expiry times; never a
    /// token).
    pub tokens: Vec<TokenStatus>,
}

/// An Environment with its references resolved.
#[derive(Clone, Debug)]
pub struct DesiredEnvironment {
    pub owner: Owner,
    pub tier: Tier,
    pub organization: String,
    pub organization_slug: String,
    pub namespaces: Vec<String>,
    /// Grants whose access has not expired, with the tier default applied.
    pub access: Vec<AccessGrant>,
    /// Organization members, who get tier-dependent default access.
    pub members: Vec<Member>,
    /// The organization's billing plan (a ResourceQuota per namespace).
    pub plan: Option<crate::api::organization::BillingPlan>,
    pub allowed_cidrs: Vec<String>,
    pub config: EnvironmentConfig,
    /// The operator's own rights in each namespace, bound first.
    pub operator_grant: Option<OperatorGrant>,
}

/// A RoleBinding of `cluster_role` to the operator's own identity.
#[derive(Clone, Debug)]
pub struct OperatorGrant {
    pub cluster_role: String,
    /// The RBAC subject (JSON) the operator authenticates as.
    pub subject: serde_json::Value,
}

/// What a backend reports about an Environment.
#[derive(Clone, Debug, Default)]
pub struct ObservedEnvironment {
    pub namespaces: Vec<String>,
}

/// A DatabaseCluster with its Environment, size and secrets resolved.
#[derive(Clone, Debug)]
pub struct DesiredDatabaseCluster {
    pub owner: Owner,
    /// Namespace of the DatabaseCluster object (in-cluster children live here).
    pub namespace: String,
    /// Name at the provider: metadata.name plus the Environment's suffix.
    pub external_name: String,
    pub environment: String,
    pub tier: Tier,
    pub organization: String,
    /// The Organization's slug at its provider, as the Environment's status
    /// resolved it (`None` until it has): where a backend that lives in a
    /// provider organization (Fly) puts the cluster.
    pub organization_slug: Option<String>,
    /// The Environment's provider network (`spec.network.name`), where the
    /// provider places clusters on one (Fly's flex clusters).
    pub network: Option<String>,
    /// Whether `spec.passwordRotation` is set (backends that cannot rotate
    /// refuse it).
    pub rotates_passwords: bool,
    pub version: String,
    pub regions: Vec<String>,
    pub size: ResolvedSize,
    pub databases: Vec<DatabaseSpec>,
    pub users: Vec<UserSpec>,
    /// Current password of every user in `users` (generated by the
    /// reconciler and kept in a Secret it owns), plus one under
    /// [`SUPERUSER`] for backends that run their own server. Never logged.
    pub passwords: BTreeMap<String, Secret>,
    /// What happens to in-cluster storage when the cluster is deleted.
    pub deletion_policy: crate::api::DeletionPolicy,
}

/// Key in [`DesiredDatabaseCluster::passwords`] of the superuser password
/// for backends that run their own server (not a user name: user names
/// cannot contain '@').
pub const SUPERUSER: &str = "@superuser";

/// What a backend reports about a DatabaseCluster.
#[derive(Clone, Debug, Default)]
pub struct ObservedDatabaseCluster {
    pub endpoint: Option<Endpoint>,
    pub replicas_desired: i32,
    pub replicas_ready: i32,
    pub version: Option<String>,
}

/// A copy from one DatabaseCluster into another (`spec.source`).
#[derive(Clone, Debug)]
pub struct CopyRequest {
    /// The source cluster, resolved like any other desired cluster.
    pub source: DesiredDatabaseCluster,
    /// Admin connection of the server holding the source, when it is not
    /// the target's server (`None`: the same server). Never logged.
    pub source_connection: Option<Secret>,
    pub mode: CopyMode,
    /// The effective rules: every rule the source requires of its copies,
    /// plus what the consumer added (a consumer can add, never remove).
    pub sanitize: Sanitize,
    /// Columns (`table.column` or `schema.table.column`) the source declares
    /// safe to copy unmasked although their names or types look sensitive.
    pub safe_columns: Vec<String>,
    /// The source explicitly allows unmasked copies: no column is refused
    /// for looking sensitive.
    pub allow_unmasked: bool,
}

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: i64,
    pub rows: i64,
}

/// DatabaseCluster backends also know how to fill one cluster from another.
#[async_trait]
pub trait DatabaseClusterClient:
    ExternalClient<Desired = DesiredDatabaseCluster, Observed = ObservedDatabaseCluster>
{
    /// The login name and database name a client uses for a declared user
    /// and database (a backend may prefix names on a shared server).
    fn connection_names(
        &self,
        target: &DesiredDatabaseCluster,
        user: &str,
        database: &str,
    ) -> (String, String) {
        let _ = target;
        (user.to_string(), database.to_string())
    }

    /// Whether the backend runs its own server, so a cluster that declares
    /// no user can hand out its superuser in the connection Secret (on a
    /// shared server it never can).
    fn has_own_superuser(&self) -> bool {
        false
    }

    /// What identifies the server the databases live on (e.g.
    /// `server db:5432`), to find production and non-production sharing one.
    fn server_identity(&self) -> Option<String> {
        None
    }

    /// The password the server issued for `user`, for backends whose server
    /// generates user passwords and cannot be given one (Fly Managed
    /// Postgres). `rotate`: have the server issue a new one first (on the
    /// reconciler's rotation schedule). `None` (the default): the backend
    /// sets the reconciler's generated password, which is the one to hand
    /// out. Never logged.
    async fn issued_password(
        &self,
        target: &DesiredDatabaseCluster,
        user: &str,
        rotate: bool,
    ) -> Result<Option<Secret>, ProviderError> {
        let _ = (target, user, rotate);
        Ok(None)
    }

    /// Copies `request.source` into `target` as the mode says. Replaces what
    /// the target databases hold.
    async fn copy_from(
        &self,
        target: &DesiredDatabaseCluster,
        request: &CopyRequest,
    ) -> Result<CopyReport, ProviderError> {
        let _ = (target, request);
        Err(ProviderError::terminal(
            crate::reasons::UNSUPPORTED,
            "this provider cannot copy between clusters",
        ))
    }
}

/// A secret string: its Debug and Display never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for the one place that must send it (a provider call, a Secret's data).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What tests of the name builders, the copy planner and the providers
/// start from: a staging cluster named `external` at the provider, owned by
/// DatabaseCluster `team/app` (uid `u-1`), smallest size, with no
/// databases, users or passwords. Public for the integration tests and
/// benches (`tests/support/desired.rs` builds on it); not an API.
#[doc(hidden)]
pub fn test_desired(external: &str) -> DesiredDatabaseCluster {
    DesiredDatabaseCluster {
        owner: Owner {
            api_version: "bulkhead.dev/v1alpha1".into(),
            kind: "DatabaseCluster".into(),
            name: "app".into(),
            uid: "u-1".into(),
            namespace: Some("team".into()),
        },
        namespace: "team".into(),
        external_name: external.into(),
        environment: "stage".into(),
        tier: Tier::Staging,
        organization: "org".into(),
        organization_slug: Some("org".into()),
        network: None,
        rotates_passwords: false,
        version: "16".into(),
        regions: vec![],
        size: ResolvedSize {
            cpus: 1,
            memory_mib: 256,
            storage_gib: 1,
            replicas: 1,
        },
        databases: vec![],
        users: vec![],
        passwords: BTreeMap::new(),
        deletion_policy: crate::api::DeletionPolicy::Delete,
    }
}

/// Generates a password: 32 characters from an alphabet safe in URIs and
/// shells, from the OS's CSPRNG.
pub fn generate_password() -> Secret {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let value: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    Secret(value)
}
