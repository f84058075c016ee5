//! DatabaseCluster: a PostgreSQL cluster (or a tenancy on a shared server)
//! belonging to an Environment, with its databases, users and connection Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DNS_LABEL, DURATION_MESSAGE, DURATION_RULE, DeletionPolicy, LocalObjectReference,
    ManagementPolicy, SQL_IDENTIFIER,
};

/// Condition types a DatabaseCluster reports besides Ready and Synced.
pub const CONDITION_PROVISIONED: &str = "Provisioned";

/// A DatabaseCluster is a PostgreSQL cluster for one application in one
/// Environment, with its databases, users and a connection Secret. Its
/// external name carries the Environment's suffix (my-app-db →
/// my-app-db-stage in staging).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "DatabaseCluster",
    plural = "databaseclusters",
    shortname = "dbc",
    category = "bulkhead",
    namespaced,
    status = "DatabaseClusterStatus",
    derive = "PartialEq",
    doc = "A DatabaseCluster is a PostgreSQL cluster for one application in one Environment.",
    printcolumn(name = "External Name", type_ = "string", json_path = ".status.externalName"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".status.provider"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".status.tier"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Synced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Synced\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name of a DatabaseCluster must be at most 40 characters (the tier suffix and pod names are added to it)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name of a DatabaseCluster must start with a letter and contain only lowercase letters, digits and '-'")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.environmentRef) || (has(self.environmentRef) && self.environmentRef == oldSelf.environmentRef)").message("spec.environmentRef is immutable once set").field_path(".environmentRef"))]
#[x_kube(validation = Rule::new("self.engine == oldSelf.engine").message("spec.engine is immutable").field_path(".engine"))]
pub struct DatabaseClusterSpec {
    /// The Environment this cluster belongs to: always the Environment that
    /// owns this object's namespace. Optional; when set it must name that
    /// Environment (a cluster cannot claim another tier). Where the
    /// databases live is the Environment's `databaseProvider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_ref: Option<LocalObjectReference>,
    /// Database engine. Only postgres.
    #[serde(default)]
    pub engine: Engine,
    /// Major version of the engine, e.g. "16".
    #[serde(default = "default_version")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new(r"self.matches('^[0-9]{2}(\\.[0-9]+)?$')").message("must be a PostgreSQL version such as \"16\" or \"16.4\""))]
    pub version: String,
    /// Regions to run in, where the provider has regions. The first is primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 32), regex(pattern = r"^[a-z0-9-]+$")), extend("x-kubernetes-list-type" = "set"))]
    pub regions: Vec<String>,
    /// Size: a preset, or a custom shape. Defaults by tier: production gets
    /// the production preset, every other tier the development preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// Databases to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub databases: Vec<DatabaseSpec>,
    /// Login roles to create, with least-privilege grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub users: Vec<UserSpec>,
    /// Rotate generated passwords on this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotation: Option<PasswordRotation>,
    /// Fill this cluster from another one (e.g. production → staging). The
    /// source must allow it in its `copyPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Who may copy from this cluster and what every copy must apply. No
    /// copyPolicy: nobody may copy from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_policy: Option<CopyPolicy>,
    /// Secret (in this namespace) that receives host, port, username,
    /// password, database and uri.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_connection_secret_to_ref: Option<LocalObjectReference>,
    /// What happens at the provider when this object is deleted. Default Delete.
    #[serde(default = "default_dbc_deletion_policy")]
    pub deletion_policy: DeletionPolicy,
    /// Full (default) or ObserveOnly.
    #[serde(default)]
    pub management_policy: ManagementPolicy,
}

fn default_version() -> String {
    "16".to_string()
}

fn default_dbc_deletion_policy() -> DeletionPolicy {
    DeletionPolicy::Delete
}

/// Database engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Postgres,
}

/// Size presets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SizePreset {
    /// 1 node, 1 CPU, 256 MiB, 1 GiB disk.
    Development,
    /// 3 nodes (HA), 2 CPUs, 4 GiB, 40 GiB disk.
    Production,
}

/// Cluster size: either a preset or a custom shape, not both.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.preset) && has(self.custom))").message("size.preset and size.custom are mutually exclusive"))]
#[x_kube(validation = Rule::new("has(self.preset) || has(self.custom)").message("size needs either preset or custom"))]
pub struct Size {
    /// development or production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<SizePreset>,
    /// A custom shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomSize>,
}

/// A custom cluster shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomSize {
    /// CPUs per node.
    #[schemars(range(min = 1, max = 64))]
    pub cpus: i32,
    /// Memory per node in MiB.
    #[serde(rename = "memoryMiB")]
    #[schemars(range(min = 256, max = 262144))]
    pub memory_mib: i32,
    /// Disk per node in GiB.
    #[serde(rename = "storageGiB")]
    #[schemars(range(min = 1, max = 16384))]
    pub storage_gib: i32,
    /// Number of nodes (1 primary plus replicas).
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
}

/// The shape a cluster runs with, once presets and tier defaults are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSize {
    pub cpus: i32,
    pub memory_mib: i32,
    pub storage_gib: i32,
    pub replicas: i32,
}

impl SizePreset {
    pub fn resolve(self) -> ResolvedSize {
        match self {
            SizePreset::Development => ResolvedSize {
                cpus: 1,
                memory_mib: 256,
                storage_gib: 1,
                replicas: 1,
            },
            SizePreset::Production => ResolvedSize {
                cpus: 2,
                memory_mib: 4096,
                storage_gib: 40,
                replicas: 3,
            },
        }
    }
}

/// A database in the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Database name.
    #[schemars(length(min = 1, max = 63), regex(pattern = SQL_IDENTIFIER))]
    pub name: String,
    /// Owning role (one of spec.users, or the cluster's owner role when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = SQL_IDENTIFIER))]
    pub owner: Option<String>,
}

/// Privileges of a user on its databases.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Privileges {
    /// SELECT on every table, now and in future.
    ReadOnly,
    /// SELECT, INSERT, UPDATE, DELETE on every table; USAGE on sequences.
    ReadWrite,
    /// Member of the database owner role: DDL included.
    Owner,
}

/// A login role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// Role name.
    #[schemars(length(min = 1, max = 63), regex(pattern = SQL_IDENTIFIER))]
    pub name: String,
    /// Databases (of this cluster) the user may connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 63), regex(pattern = SQL_IDENTIFIER)), extend("x-kubernetes-list-type" = "set"))]
    pub databases: Vec<String>,
    /// readOnly, readWrite or owner.
    pub privileges: Privileges,
    /// Maximum concurrent connections; -1 or unset for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1, max = 10000))]
    pub connection_limit: Option<i32>,
}

/// Password rotation schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordRotation {
    /// Rotate after this long, as a Go duration (e.g. 720h).
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[x_kube(validation = Rule::new(format!("!{DURATION_RULE} || duration(self) >= duration('1m')")).message("passwordRotation.interval must be at least 1m"))]
    pub interval: kube::core::Duration,
}

/// How a copy is made.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CopyMode {
    /// Tables, sequences, views and indexes; no rows.
    SchemaOnly,
    /// Schema and rows, with excluded tables left out and masked columns rewritten.
    Sanitized,
}

/// What a masked column becomes in the copy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MaskAction {
    /// NULL.
    Null,
    /// A keyed hash of the value (joins still match, the value is gone).
    Hash,
    /// A fixed placeholder.
    Redact,
}

/// Rules for removing sensitive data from a copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sanitize {
    /// Tables (`table` or `schema.table`) left out of the copy entirely.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500), inner(length(min = 1, max = 127), regex(pattern = r"^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$")), extend("x-kubernetes-list-type" = "set"))]
    pub exclude_tables: Vec<String>,
    /// Columns (`table.column` or `schema.table.column`) to rewrite.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 500))]
    pub columns: BTreeMap<String, MaskAction>,
}

/// The source side's consent to copies: who may copy, and the rules every
/// copy applies. Read from the source at copy time; a consumer can add
/// rules, never remove these.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyPolicy {
    /// Environments (by name) whose DatabaseClusters may copy from this one.
    /// Empty: nobody.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)), extend("x-kubernetes-list-type" = "set"))]
    pub allowed_environments: Vec<String>,
    /// Rules every Sanitized copy applies, whatever the consumer asks: its
    /// excluded tables are always excluded, its masked columns always
    /// masked with this action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitize: Option<Sanitize>,
    /// Columns (`table.column` or `schema.table.column`) whose names or
    /// types look sensitive (emails, names, tokens, …) but which may be
    /// copied unmasked. Every other such column must be masked or excluded,
    /// or the copy is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500), inner(length(min = 3, max = 191), regex(pattern = r"^([a-z_][a-z0-9_]*\.){1,2}[a-z_][a-z0-9_]*$")), extend("x-kubernetes-list-type" = "set"))]
    pub safe_columns: Vec<String>,
    /// Allow Sanitized copies with no rule at all, and skip the check for
    /// sensitive-looking columns: copies may hold every row in clear.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unmasked: bool,
}

/// A reference to another DatabaseCluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReference {
    /// Name of the source DatabaseCluster.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Its namespace; defaults to this object's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Fill this cluster from another one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'Sanitized' || !has(self.sanitize)").message("source.sanitize is only valid with mode Sanitized"))]
pub struct Source {
    /// The DatabaseCluster to copy from. Copies flow from a higher tier to a
    /// lower one (production → staging), never upward.
    pub cluster_ref: ClusterReference,
    /// SchemaOnly or Sanitized.
    pub mode: CopyMode,
    /// What to leave out or rewrite (Sanitized only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitize: Option<Sanitize>,
    /// Bump to copy again; a copy is made once per value.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub refresh_generation: i64,
}

/// Observed state of a DatabaseCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClusterStatus {
    /// Ready, Synced, Provisioned.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where clients connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Nodes wanted and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaStatus>,
    /// Engine version running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Name at the provider (name plus the Environment's suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// Provider in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Tier of the owning Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Environment the cluster belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Name of the connection Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret: Option<String>,
    /// When generated passwords were last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotated_at: Option<Time>,
    /// The last copy from spec.source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyStatus>,
}

/// Network endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub host: String,
    pub port: i32,
}

/// Replica counts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub desired: i32,
    pub ready: i32,
}

/// What the last copy did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyStatus {
    /// Source as namespace/name.
    pub source: String,
    pub mode: CopyMode,
    /// source.refreshGeneration the copy was made for.
    pub refresh_generation: i64,
    pub tables: i64,
    pub rows: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

impl DatabaseCluster {
    /// The cluster's size, with presets and the tier default resolved.
    pub fn resolved_size(&self, production_tier: bool) -> ResolvedSize {
        match &self.spec.size {
            Some(Size {
                custom: Some(c), ..
            }) => ResolvedSize {
                cpus: c.cpus,
                memory_mib: c.memory_mib,
                storage_gib: c.storage_gib,
                replicas: c.replicas,
            },
            Some(Size {
                preset: Some(p), ..
            }) => p.resolve(),
            _ if production_tier => SizePreset::Production.resolve(),
            _ => SizePreset::Development.resolve(),
        }
    }
}
