//! Types shared by every bulkhead kind: provider selection, secret references,
//! deletion and management policies, and `metav1.Condition` handling.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every bulkhead kind.
pub const GROUP: &str = "bulkhead.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// An RFC 1123 label (namespaces, most object names). This and the
/// patterns below are what the CRD schemas check names against.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// An RFC 1123 subdomain: Secret names.
pub const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";
/// A key of a Secret's data.
pub const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";
/// A PostgreSQL identifier bulkhead never needs to quote.
pub const SQL_IDENTIFIER: &str = r"^[a-z_][a-z0-9_]*$";

/// Finalizer the controllers put on every object they manage.
pub const FINALIZER: &str = "bulkhead.dev/finalizer";
/// Annotation naming the external object (adopt an existing one; written after create).
pub const ANNOTATION_EXTERNAL_NAME: &str = "bulkhead.dev/external-name";
/// Annotation that stops reconciliation while it is `"true"`.
pub const ANNOTATION_PAUSED: &str = "bulkhead.dev/paused";
/// Annotation written before a create call and cleared after it, so a crash in
/// between is noticed and the next reconcile observes before creating again.
pub const ANNOTATION_CREATE_PENDING: &str = "bulkhead.dev/create-pending";

/// Labels stamped on everything bulkhead creates in the cluster.
pub const LABEL_ENVIRONMENT: &str = "bulkhead.dev/environment";
pub const LABEL_TIER: &str = "bulkhead.dev/tier";
pub const LABEL_ORGANIZATION: &str = "bulkhead.dev/organization";
pub const LABEL_DATABASE_CLUSTER: &str = "bulkhead.dev/database-cluster";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of `app.kubernetes.io/managed-by` on objects bulkhead owns.
pub const MANAGER: &str = "bulkhead";

/// Condition types every kind reports.
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_SYNCED: &str = "Synced";

/// CEL rule for a Go duration string (e.g. `720h`, `1h30m`), checked before
/// `duration(self)` so a malformed value gets a readable message instead of
/// a CEL type-conversion error. Fields using it need a `maxLength`.
pub const DURATION_RULE: &str = r"self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";
/// Message for [`DURATION_RULE`].
pub const DURATION_MESSAGE: &str = "must be a duration such as 720h, 90m or 1h30m";

/// Which backend holds the external objects.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// In-cluster tenancy: RBAC, NetworkPolicies, quotas; DatabaseClusters as CloudNativePG Clusters. Needs no credentials.
    #[default]
    Kubernetes,
    /// Fly.io organizations, tokens and Postgres clusters. Needs an API token.
    Fly,
    /// Databases and roles on an existing PostgreSQL server. Needs an admin connection.
    Postgres,
}

impl ProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::Kubernetes => "kubernetes",
            ProviderType::Fly => "fly",
            ProviderType::Postgres => "postgres",
        }
    }

    /// Whether this backend cannot work without a credentials Secret.
    pub fn needs_credentials(self) -> bool {
        !matches!(self, ProviderType::Kubernetes)
    }
}

impl std::fmt::Display for ProviderType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The backend that holds an object's external state, and where its credentials live.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'kubernetes' || has(self.credentialsSecretRef)").message("provider types fly and postgres need credentialsSecretRef"))]
#[x_kube(validation = Rule::new("!has(self.fly) || self.type == 'fly'").message("fly settings are only allowed when type is fly"))]
pub struct ProviderSpec {
    /// Backend type: `kubernetes` (default, no credentials), `fly` or `postgres`.
    #[serde(rename = "type", default)]
    pub type_: ProviderType,
    /// Key of a Secret in the operator's own namespace holding the backend's
    /// credentials: a Fly.io API token, or a PostgreSQL admin connection
    /// string. Required for `fly` and `postgres`. Credentials are never read
    /// from any other namespace, and are named only by cluster-scoped
    /// objects (Organization, Environment), which the platform team writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// Settings of the `fly` provider only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fly: Option<FlyProviderSettings>,
}

/// How the `fly` provider builds what it holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlyProviderSettings {
    /// Which form of Postgres DatabaseClusters take at Fly: `Managed`
    /// (default; Fly Managed Postgres, `/v1/postgres`) or `Flex` (the
    /// machines cluster `fly postgres create` builds).
    #[serde(default)]
    pub postgres: FlyPostgres,
}

/// The form of a Fly Postgres cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FlyPostgres {
    /// Fly Managed Postgres.
    #[default]
    Managed,
    /// A postgres-flex cluster built from machines.
    Flex,
}

/// A key of a Secret in the operator's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the operator's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
}

/// A Secret in a named namespace, with the key to write a value under.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretWriteRef {
    /// Namespace of the Secret; it must exist.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,
    /// Name of the Secret; created if missing, owned by bulkhead.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// Key the value is written under.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_string()
}

/// A reference to a cluster-scoped object by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,
}

/// What happens to the external object when the Kubernetes object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the external object too.
    Delete,
    /// Leave the external object in place, unmanaged.
    Orphan,
}

/// Whether bulkhead may write to the external object.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ManagementPolicy {
    /// Create, update and (by deletionPolicy) delete.
    #[default]
    Full,
    /// Adopt and report status; never write to the provider.
    ObserveOnly,
}

/// `true` when the annotation is present with the value `"true"`.
pub fn annotation_is_true(meta: &kube::api::ObjectMeta, key: &str) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .is_some_and(|v| v == "true")
}

/// Status of a condition, as the strings `metav1.Condition` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// Sets a condition in a `metav1.Condition` list.
///
/// `lastTransitionTime` moves only when the status changes (so `kubectl wait`
/// and alerting see real transitions, not every resync); reason, message and
/// `observedGeneration` are always refreshed. Returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let message = message.into();
    let status = status.as_str();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        let changed = existing.status != status
            || existing.reason != reason
            || existing.message != message
            || existing.observed_generation != observed_generation;
        if existing.status != status {
            existing.last_transition_time = Time(now);
            existing.status = status.to_string();
        }
        existing.reason = reason.to_string();
        existing.message = message;
        existing.observed_generation = observed_generation;
        changed
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation,
            last_transition_time: Time(now),
        });
        true
    }
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `true` when the condition is present with status `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    use ConditionStatus::{False, True};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid timestamp")
    }

    /// (type, status, reason, message, generation, seconds after `t(0)`).
    type Change<'a> = (&'a str, ConditionStatus, &'a str, &'a str, Option<i64>, i64);

    fn set(
        conds: &mut Vec<Condition>,
        (type_, status, reason, message, generation, at): Change,
    ) -> bool {
        set_condition(conds, type_, status, reason, message, generation, t(at))
    }

    #[test]
    fn new_condition_is_added_with_transition_time_and_generation() {
        let mut conds = Vec::new();
        let creating = (
            CONDITION_READY,
            False,
            "Creating",
            "creating namespace",
            Some(3),
            0,
        );
        let changed = set(&mut conds, creating);
        assert!(changed);
        assert_eq!(conds.len(), 1);
        let c = &conds[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Ready", "False"));
        assert_eq!(c.reason, "Creating");
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time, Time(t(0)));
    }

    #[test]
    fn same_status_keeps_transition_time_but_refreshes_reason_and_generation() {
        let mut conds = Vec::new();
        set(&mut conds, ("Ready", False, "A", "a", Some(1), 0));
        let changed = set(&mut conds, ("Ready", False, "B", "b", Some(2), 60));
        assert!(changed);
        assert_eq!(conds[0].last_transition_time, Time(t(0)));
        assert_eq!(conds[0].reason, "B");
        assert_eq!(conds[0].message, "b");
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn status_change_moves_transition_time() {
        let mut conds = Vec::new();
        set(&mut conds, ("Ready", False, "A", "a", Some(1), 0));
        set(&mut conds, ("Ready", True, "Available", "ok", Some(1), 90));
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[0].last_transition_time, Time(t(90)));
        assert!(is_condition_true(&conds, "Ready"));
    }

    #[test]
    fn identical_condition_reports_no_change() {
        let mut conds = Vec::new();
        let synced = |at| ("Synced", True, "ReconcileSuccess", "", Some(1), at);
        set(&mut conds, synced(0));
        let changed = set(&mut conds, synced(5));
        assert!(!changed);
        assert_eq!(conds[0].last_transition_time, Time(t(0)));
    }

    #[test]
    fn conditions_are_keyed_by_type() {
        let mut conds = Vec::new();
        set(&mut conds, ("Ready", True, "A", "", None, 0));
        set(&mut conds, ("Synced", False, "B", "", None, 0));
        set(&mut conds, ("Ready", False, "C", "", None, 1));
        assert_eq!(conds.len(), 2);
        assert_eq!(
            find_condition(&conds, "Ready").map(|c| c.reason.as_str()),
            Some("C")
        );
        assert!(!is_condition_true(&conds, "Synced"));
        assert!(find_condition(&conds, "Isolated").is_none());
    }
}
