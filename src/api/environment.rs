//! Environment: a tier (production, staging, …) bound to one Organization,
//! realised as labelled namespaces with RBAC, network rules and config.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{LocalObjectReference, ProviderSpec};

/// Condition types an Environment reports besides Ready and Synced.
pub const CONDITION_ISOLATED: &str = "Isolated";
pub const CONDITION_ORGANIZATION_READY: &str = "OrganizationReady";

/// Label a platform admin puts on a namespace bulkhead did not create, so
/// that the named Environment may adopt it:
/// `kubectl label namespace payments-prod bulkhead.dev/adoptable-by=payments`.
pub const LABEL_ADOPTABLE_BY: &str = "bulkhead.dev/adoptable-by";

/// An Environment is one tier of an application's life (production,
/// staging, …): namespaces labelled with the tier, access for people and
/// service accounts, network restrictions and configuration, bound to the
/// Organization that isolates it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "Environment",
    plural = "environments",
    shortname = "env",
    category = "bulkhead",
    status = "EnvironmentStatus",
    derive = "PartialEq",
    doc = "An Environment is one tier (production, staging, development, testing, preview) bound to an Organization.",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Organization", type_ = "string", json_path = ".spec.organizationRef.name"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Synced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Synced\")].status"),
    printcolumn(name = "Isolated", type_ = "string", priority = 1, json_path = ".status.conditions[?(@.type==\"Isolated\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name of an Environment must be at most 63 characters (it names a namespace)"),
    validation = Rule::new("(has(self.spec.namespaces) && size(self.spec.namespaces) > 0) || !(self.metadata.name == 'default' || self.metadata.name.startsWith('kube-'))").message("an Environment without spec.namespaces takes the namespace named after it, and bulkhead never manages default or kube-* namespaces: choose another name or list spec.namespaces")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.tier == oldSelf.tier").message("spec.tier is immutable: create a new Environment for another tier").field_path(".tier"))]
#[x_kube(validation = Rule::new("!has(self.naming) || !has(self.naming.suffix) || self.tier != 'production' || self.naming.suffix == ''").message("a production Environment cannot carry a naming suffix").field_path(".naming.suffix"))]
pub struct EnvironmentSpec {
    /// The Organization this environment belongs to.
    pub organization_ref: LocalObjectReference,
    /// production, staging, development, testing or preview.
    pub tier: Tier,
    /// Namespaces of the environment. Defaults to one namespace named after
    /// the Environment. Each is labelled bulkhead.dev/environment,
    /// bulkhead.dev/tier and bulkhead.dev/organization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 63)), extend("x-kubernetes-list-type" = "set"), transform = dns_label_items)]
    pub namespaces: Vec<String>,
    /// Who may do what in the environment's namespaces. Production defaults
    /// to least privilege: organization members get read-only access there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub access: Vec<AccessGrant>,
    /// Network restrictions for traffic into the environment's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Settings apps read: written to the ConfigMap `bulkhead-environment`
    /// in each namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<EnvironmentConfig>,
    /// How external names of this environment's resources are formed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub naming: Option<Naming>,
    /// Where promotions into this environment come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// Isolation policy enforcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Where this environment's DatabaseClusters live, and the credentials
    /// for that place (a Secret in the operator's namespace): e.g.
    /// `{type: postgres, credentialsSecretRef: {name: pg-staging, key: dsn}}`
    /// for a shared PostgreSQL server. Defaults to the Organization's
    /// provider (`kubernetes`: in the cluster). Chosen here, by the platform
    /// team, never by a DatabaseCluster. A production Environment never
    /// shares its database server or credentials with another tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_provider: Option<ProviderSpec>,
}

/// Gives every item of a string list a DNS-label rule whose message says what
/// a namespace name may contain (a bare `pattern` only prints the regex).
fn dns_label_items(schema: &mut schemars::Schema) {
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        items.insert(
            "x-kubernetes-validations".into(),
            serde_json::json!([{
                "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
                "message": "must be a DNS label (a namespace name): lowercase letters, digits and '-', starting and ending with a letter or digit",
            }, {
                "rule": "self != 'default' && !self.startsWith('kube-')",
                "message": "bulkhead never manages the default or kube-* namespaces",
            }]),
        );
    }
}

/// Lifecycle tier of an environment, from most to least protected.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Production,
    Staging,
    Testing,
    Development,
    Preview,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Production => "production",
            Tier::Staging => "staging",
            Tier::Testing => "testing",
            Tier::Development => "development",
            Tier::Preview => "preview",
        }
    }

    /// Rank on the promotion path: higher flows from lower.
    /// development/preview → testing → staging → production.
    pub fn rank(self) -> u8 {
        match self {
            Tier::Production => 4,
            Tier::Staging => 3,
            Tier::Testing => 2,
            Tier::Development | Tier::Preview => 1,
        }
    }

    /// Default suffix for external names of resources in this tier.
    pub fn default_suffix(self) -> &'static str {
        match self {
            Tier::Production => "",
            Tier::Staging => "-stage",
            Tier::Testing => "-test",
            Tier::Development => "-dev",
            Tier::Preview => "-preview",
        }
    }
}

/// Roles in an environment; each maps to a ClusterRole bulkhead ships
/// (`bulkhead-environment-<role>`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum EnvironmentRole {
    /// Everything in the namespaces, including RBAC within them.
    Admin,
    /// Deploy and operate workloads; read Secrets.
    Developer,
    /// Run and inspect workloads and jobs; no Secrets.
    Tester,
    /// Read-only, no Secrets.
    Viewer,
}

impl EnvironmentRole {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentRole::Admin => "admin",
            EnvironmentRole::Developer => "developer",
            EnvironmentRole::Tester => "tester",
            EnvironmentRole::Viewer => "viewer",
        }
    }

    pub const ALL: [EnvironmentRole; 4] = [
        EnvironmentRole::Admin,
        EnvironmentRole::Developer,
        EnvironmentRole::Tester,
        EnvironmentRole::Viewer,
    ];
}

/// An RBAC subject.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind != 'ServiceAccount' || has(self.namespace)").message("a ServiceAccount subject requires namespace"))]
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' || !has(self.namespace)").message("namespace is only valid for ServiceAccount subjects"))]
pub struct Subject {
    /// User, Group or ServiceAccount.
    pub kind: SubjectKind,
    /// Name of the user, group or service account.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of a ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Kind of an RBAC subject.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "User",
            SubjectKind::Group => "Group",
            SubjectKind::ServiceAccount => "ServiceAccount",
        }
    }
}

/// A role granted to subjects in every namespace of the environment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessGrant {
    /// Who gets the role.
    #[schemars(length(min = 1, max = 100))]
    pub subjects: Vec<Subject>,
    /// admin, developer, tester or viewer.
    pub role: EnvironmentRole,
    /// Temporary access: the grant is removed once this passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// Network restrictions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The provider network the environment's apps and databases join.
    /// Fly: a custom network of the organization (isolating these apps
    /// from the org's others). Fly fixes an app's network when the app is
    /// created, and apps on different custom networks cannot reach each
    /// other, so the environment's network is fixed too: bound at its
    /// first reconcile (`status.network`), and a later change is a
    /// terminal `Synced=False NetworkFixed` on the Environment, never a
    /// move. Flex DatabaseClusters join it; Fly's Managed Postgres API
    /// takes no network. Unset: the organization's default network. Other
    /// providers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$')").message("must be a network name: lowercase letters, digits, '-' and '_', starting and ending with a letter or digit (e.g. staging-net)"))]
    pub name: Option<String>,
    /// CIDRs that may reach the environment's namespaces besides the
    /// organization's own namespaces. Empty: only the organization.
    #[serde(
        default,
        rename = "allowedCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 100))]
    pub allowed_cidrs: Vec<Cidr>,
}

/// A network as messages name it: `network <name>`, or the organization's
/// default network for none (Fly reports that as an empty name).
pub fn describe_network(name: Option<&str>) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(n) => format!("network {n}"),
        None => "the organization's default network".to_string(),
    }
}

/// An IPv4 or IPv6 CIDR, checked by the apiserver (`isCIDR`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Cidr(pub String);

impl JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 49,
            "x-kubernetes-validations": [{
                "rule": "isCIDR(self)",
                "message": "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32",
            }],
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// Environment-specific settings for apps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentConfig {
    /// Key/value settings, copied to the ConfigMap as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Feature flags, written as `FEATURE_<NAME>` = "true"/"false".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_flags: BTreeMap<String, bool>,
    /// Secrets (by name, in each of the environment's namespaces) whose keys
    /// apps should also read; listed in the ConfigMap, never copied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_refs: Vec<LocalObjectReference>,
}

/// Naming of external resources.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Naming {
    /// Appended to the names of external resources (my-app-db →
    /// my-app-db-stage). Defaults by tier: "" production, -stage staging,
    /// -test testing, -dev development, -preview preview.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 12), regex(pattern = r"^(-[a-z0-9]+)*$"))]
    pub suffix: Option<String>,
}

/// Promotion path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// The upstream Environment releases are promoted from. Tiers only flow
    /// upward (development → staging → production).
    pub from: LocalObjectReference,
}

/// Isolation policy mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum IsolationMode {
    /// A violation stops provisioning until fixed.
    #[default]
    Enforce,
    /// A violation is reported (Isolated=False) but provisioning continues.
    Warn,
}

/// Isolation policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Isolation {
    /// Enforce (default) or Warn.
    #[serde(default)]
    pub mode: IsolationMode,
}

impl Environment {
    /// The network the environment's apps join: the bound one once bound,
    /// else the one the spec names.
    pub fn network_name(&self) -> Option<String> {
        match self.status.as_ref().and_then(|s| s.network.as_ref()) {
            Some(bound) => bound.name.clone(),
            None => self.spec.network.as_ref().and_then(|n| n.name.clone()),
        }
    }

    /// The namespaces this environment owns (spec, else its own name).
    pub fn namespaces(&self) -> Vec<String> {
        if self.spec.namespaces.is_empty() {
            self.metadata.name.clone().into_iter().collect()
        } else {
            self.spec.namespaces.clone()
        }
    }

    /// Suffix for external names: spec.naming.suffix, else the tier default.
    pub fn suffix(&self) -> String {
        self.spec
            .naming
            .as_ref()
            .and_then(|n| n.suffix.clone())
            .unwrap_or_else(|| self.spec.tier.default_suffix().to_string())
    }

    pub fn isolation_mode(&self) -> IsolationMode {
        self.spec
            .isolation
            .as_ref()
            .map(|i| i.mode)
            .unwrap_or_default()
    }
}

/// Observed state of an Environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// Ready, Synced, Isolated, OrganizationReady.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Namespaces created and labelled for this environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Slug of the Organization this environment is bound to, as its
    /// provider knows it (for Fly, the slug Fly reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_slug: Option<String>,
    /// Suffix applied to external names in this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Access grants removed because they expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired_access: Vec<String>,
    /// The provider network this environment's apps and databases join,
    /// bound at the environment's first reconcile in a Fly organization
    /// and fixed from then on (see `spec.network.name`). Unset: not bound
    /// (another provider, or not reconciled yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<BoundNetwork>,
}

/// The network an environment was bound to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundNetwork {
    /// The custom network's name; unset: the organization's default
    /// network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
