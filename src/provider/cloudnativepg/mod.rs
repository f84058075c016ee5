//! DatabaseClusters in the cluster through CloudNativePG: a DatabaseCluster
//! becomes a `postgresql.cnpg.io/v1` `Cluster` named with the Environment's
//! suffix, its users become the Cluster's managed roles (each with a
//! `kubernetes.io/basic-auth` Secret holding the password bulkhead
//! generated), and its databases become CNPG `Database` objects. Running
//! PostgreSQL (pods, replication, failover, the `-rw` Service) is
//! CloudNativePG's job; bulkhead only writes these objects, through the
//! generic child engine, and reads back what CloudNativePG reports.

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::api::LABEL_DATABASE_CLUSTER;
use crate::api::database_cluster::{Endpoint, Privileges};
use crate::provider::kubernetes::children::{ChildKind, SECRET};
use crate::provider::kubernetes::{Child, Children, is_owned_by};
use crate::provider::{
    DatabaseClusterClient, DesiredDatabaseCluster, ExternalClient, Observation, Observed,
    ObservedDatabaseCluster, ProviderError, Readiness, SUPERUSER,
};
use crate::reasons;

/// CloudNativePG's API group.
pub const GROUP: &str = "postgresql.cnpg.io";

pub const CLUSTER: ChildKind = ChildKind {
    group: GROUP,
    version: "v1",
    kind: "Cluster",
    plural: "clusters",
    namespaced: true,
};
pub const DATABASE: ChildKind = ChildKind {
    group: GROUP,
    version: "v1",
    kind: "Database",
    plural: "databases",
    namespaced: true,
};

/// Everything this backend writes: stale ones (a user or database removed
/// from the spec) are found by the owner label and deleted.
const KINDS: [ChildKind; 3] = [CLUSTER, DATABASE, SECRET];
const PORT: i32 = 5432;
/// CloudNativePG's phase of a cluster that is up and doing nothing.
const PHASE_HEALTHY: &str = "Cluster in healthy state";
/// Label that makes CloudNativePG reload a Secret it uses when it changes
/// (password rotation).
const LABEL_RELOAD: &str = "cnpg.io/reload";

/// How to install CloudNativePG, for the CloudNativePGNotInstalled message.
pub const INSTALL_HINT: &str = "install CloudNativePG (1.28; e.g. `helm install cnpg cnpg/cloudnative-pg -n cnpg-system --create-namespace` from https://cloudnative-pg.github.io/charts, or `kubectl apply --server-side -f https://raw.githubusercontent.com/cloudnative-pg/cloudnative-pg/release-1.28/releases/cnpg-1.28.1.yaml`); DatabaseClusters of the kubernetes provider become CloudNativePG Clusters";

/// Kubernetes-provider DatabaseClusters, as CloudNativePG objects.
pub struct CloudNativePgDatabaseClusters {
    children: Children,
    /// Image repository of the PostgreSQL operand images; the tag is the
    /// cluster's version (`ghcr.io/cloudnative-pg/postgresql:16`).
    image_repository: String,
}

/// Name of the `-rw` Service CloudNativePG creates for the primary.
pub fn rw_service(external_name: &str) -> String {
    format!("{external_name}-rw")
}

/// Name of the basic-auth Secret of a managed role.
pub fn role_secret(external_name: &str, user: &str) -> String {
    format!("{external_name}-role-{}", object_name_part(user))
}

/// Name of the basic-auth Secret of the superuser (only when no user is
/// declared, the one case bulkhead hands out the superuser).
pub fn superuser_secret(external_name: &str) -> String {
    format!("{external_name}-superuser")
}

/// Name of the CNPG `Database` object for a database.
pub fn database_object(external_name: &str, database: &str) -> String {
    format!("{external_name}-db-{}", object_name_part(database))
}

/// A PostgreSQL name (`^[a-z_][a-z0-9_]*$`) as part of an object name
/// (DNS subdomain: no '_', no leading or trailing '-'). Names with '_' get a
/// short hash of the original, so `a_b` and `a-b`-like collisions cannot
/// map two databases onto one object.
fn object_name_part(name: &str) -> String {
    if !name.contains('_') {
        return name.to_string();
    }
    let readable = name.replace('_', "-");
    let readable = readable.trim_matches('-');
    // FNV-1a: a stable, dependency-free disambiguator (not a security hash).
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    if readable.is_empty() {
        format!("{hash:08x}")
    } else {
        format!("{readable}-{hash:08x}")
    }
}

/// A memory quantity as the preset says it (4096 MiB as `4Gi`), so what is
/// applied and compared reads like what a person would write.
fn memory_quantity(mib: i32) -> String {
    if mib % 1024 == 0 {
        format!("{}Gi", mib / 1024)
    } else {
        format!("{mib}Mi")
    }
}

/// A Secret's `data` value (base64): the apiserver stores only `data`, so
/// that is what drift is compared against.
fn secret_value(value: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(value.as_bytes().to_vec())).unwrap_or(Value::Null)
}

/// The roles a user is a member of, which is how its privileges are
/// expressed in CloudNativePG (its CRDs have no table grants): owners join
/// the owner role of each of their databases; readOnly and readWrite users
/// get PostgreSQL's predefined pg_read_all_data / pg_write_all_data. Those
/// would span every database of the cluster, so [`hba_rules`] lets each
/// user connect to its own databases only.
fn member_of(
    d: &DesiredDatabaseCluster,
    user: &crate::api::database_cluster::UserSpec,
) -> Vec<String> {
    let mut roles: Vec<String> = match user.privileges {
        Privileges::ReadOnly => vec!["pg_read_all_data".into()],
        Privileges::ReadWrite => vec!["pg_read_all_data".into(), "pg_write_all_data".into()],
        Privileges::Owner => user
            .databases
            .iter()
            .filter_map(|db| d.databases.iter().find(|x| &x.name == db))
            .filter_map(|x| x.owner.clone())
            .filter(|owner| owner != &user.name)
            .collect(),
    };
    roles.sort();
    roles.dedup();
    roles
}

/// A name as pg_hba.conf takes it: double-quoted, so it is never read as
/// a keyword (`all`, `sameuser`, `replication`) or a list.
fn hba_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// pg_hba.conf lines confining every declared user to its databases: one
/// rule letting it in (password, SCRAM) to the databases it lists, then one
/// rejecting it everywhere else. CloudNativePG puts user rules before its
/// default `host all all all scram-sha-256`, and the first matching line
/// wins, so a readOnly user of `app` cannot even connect to `audit_log`.
fn hba_rules(d: &DesiredDatabaseCluster) -> Vec<String> {
    let mut rules = Vec::new();
    for user in &d.users {
        let role = hba_name(&user.name);
        let databases: Vec<String> = user.databases.iter().map(|db| hba_name(db)).collect();
        if !databases.is_empty() {
            rules.push(format!(
                "host {} {role} all scram-sha-256",
                databases.join(",")
            ));
        }
        rules.push(format!("host all {role} all reject"));
    }
    rules
}

impl CloudNativePgDatabaseClusters {
    pub fn new(children: Children, image_repository: impl Into<String>) -> Self {
        CloudNativePgDatabaseClusters {
            children,
            image_repository: image_repository.into(),
        }
    }

    fn desired_children(&self, d: &DesiredDatabaseCluster, owned: bool) -> Vec<Child> {
        desired_children(&self.image_repository, d, owned)
    }

    /// Whether CloudNativePG's API is served, so a missing CRD reads as
    /// "install CloudNativePG" instead of a bare 404.
    async fn installed(&self) -> Result<bool, ProviderError> {
        // A synced watch of both kinds means they are served: no discovery
        // request per reconcile.
        if self.children.watching(CLUSTER) && self.children.watching(DATABASE) {
            return Ok(true);
        }
        match self
            .children
            .client()
            .list_api_group_resources(&CLUSTER.api_version())
            .await
        {
            Ok(list) => Ok([CLUSTER, DATABASE]
                .iter()
                .all(|k| list.resources.iter().any(|r| r.name == k.plural))),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(ProviderError::unavailable(format!(
                "discovering {GROUP}: {e}"
            ))),
        }
    }

    async fn require_installed(&self) -> Result<(), ProviderError> {
        if self.installed().await? {
            Ok(())
        } else {
            Err(not_installed())
        }
    }

    /// Refuses to write over a Secret bulkhead did not make for this
    /// cluster (a team's own Secret under the same name).
    async fn check_secrets(
        &self,
        desired: &[Child],
        d: &DesiredDatabaseCluster,
    ) -> Result<(), ProviderError> {
        for child in desired.iter().filter(|c| c.kind == SECRET) {
            let Some(live) = self
                .children
                .get(SECRET, Some(&d.namespace), &child.name)
                .await?
            else {
                continue;
            };
            if !is_owned_by(&live, &d.owner) {
                return Err(ProviderError::terminal(
                    reasons::SECRET_CONFLICT,
                    format!(
                        "Secret {}/{} already exists and was not made by bulkhead for DatabaseCluster {}; bulkhead never writes, adopts or deletes it: rename the user, or remove that Secret",
                        d.namespace, child.name, d.owner.name
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn apply(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        self.require_installed().await?;
        let desired = self.desired_children(d, true);
        self.check_secrets(&desired, d).await?;
        self.children.apply(&desired, &KINDS, &d.owner).await
    }
}

/// Every object a DatabaseCluster is made of; `owned` adds the owner
/// reference (without it, applying detaches them: Orphan).
fn desired_children(image_repository: &str, d: &DesiredDatabaseCluster, owned: bool) -> Vec<Child> {
    let ext = d.external_name.as_str();
    let ns = Some(d.namespace.as_str());
    let metadata = json!({ "labels": { LABEL_DATABASE_CLUSTER: d.owner.name } });
    let mut out = Vec::new();

    let basic_auth = |name: &str, username: &str, password: &str| {
        Child::new(
            SECRET,
            ns,
            name,
            &d.owner,
            owned,
            json!({
                "metadata": { "labels": { LABEL_DATABASE_CLUSTER: d.owner.name, LABEL_RELOAD: "true" } },
                "type": "kubernetes.io/basic-auth",
                "data": { "username": secret_value(username), "password": secret_value(password) },
            }),
        )
    };

    let mut roles = Vec::new();
    for u in &d.users {
        let secret = role_secret(ext, &u.name);
        if let Some(password) = d.passwords.get(&u.name) {
            out.push(basic_auth(&secret, &u.name, password.expose()));
        }
        let mut role = json!({
            "name": u.name,
            "ensure": "present",
            "login": true,
            "superuser": false,
            "createdb": false,
            "createrole": false,
            "replication": false,
            "inherit": true,
            "passwordSecret": { "name": secret },
            "inRoles": member_of(d, u),
        });
        if let Some(limit) = u.connection_limit {
            role["connectionLimit"] = json!(limit);
        }
        roles.push(role);
    }
    // A role that owns a database but is not a declared user still has
    // to exist for the Database to be created: a role without login.
    for db in &d.databases {
        if let Some(owner) = &db.owner
            && !d.users.iter().any(|u| &u.name == owner)
            && !roles.iter().any(|r| r["name"] == json!(owner))
        {
            roles.push(json!({ "name": owner, "ensure": "present", "login": false }));
        }
    }

    let size = &d.size;
    let mut spec = json!({
        "instances": size.replicas,
        "imageName": format!("{}:{}", image_repository, d.version),
        "resources": {
            "requests": { "cpu": size.cpus.to_string(), "memory": memory_quantity(size.memory_mib) },
            "limits": { "memory": memory_quantity(size.memory_mib) },
        },
        "storage": { "size": format!("{}Gi", size.storage_gib) },
        "managed": { "roles": roles },
    });
    // CloudNativePG's recommended HA shape: quorum-based synchronous
    // replication to one of the standbys, so a commit survives losing
    // the primary and one standby may be down without blocking writes.
    let hba = hba_rules(d);
    if !hba.is_empty() {
        spec["postgresql"]["pg_hba"] = json!(hba);
    }
    if size.replicas >= 3 {
        spec["postgresql"]["synchronous"] =
            json!({ "method": "any", "number": 1, "dataDurability": "required" });
    }
    // The superuser is handed out (in the connection Secret) only when
    // no user is declared; otherwise CloudNativePG's default stands:
    // no superuser login from the network.
    let superuser = d.passwords.get(SUPERUSER).filter(|_| d.users.is_empty());
    spec["enableSuperuserAccess"] = json!(superuser.is_some());
    if let Some(password) = superuser {
        let secret = superuser_secret(ext);
        out.push(basic_auth(&secret, "postgres", password.expose()));
        spec["superuserSecret"] = json!({ "name": secret });
    }
    out.push(Child::new(
        CLUSTER,
        ns,
        ext,
        &d.owner,
        owned,
        json!({ "metadata": metadata, "spec": spec }),
    ));

    for db in &d.databases {
        out.push(Child::new(
            DATABASE,
            ns,
            &database_object(ext, &db.name),
            &d.owner,
            owned,
            json!({ "metadata": metadata, "spec": {
                "name": db.name,
                "owner": db.owner.clone().unwrap_or_else(|| "postgres".into()),
                "cluster": { "name": ext },
                "ensure": "present",
                // Removing a database from the spec deletes its
                // Database object but never drops its data; deleting
                // the whole Cluster (deletionPolicy Delete) does.
                "databaseReclaimPolicy": "retain",
            }}),
        ));
    }
    out
}

/// Synced=False CloudNativePGNotInstalled: retried with backoff, so
/// installing CloudNativePG is enough for the cluster to converge.
fn not_installed() -> ProviderError {
    ProviderError::transient(
        reasons::CLOUDNATIVEPG_NOT_INSTALLED,
        format!(
            "CloudNativePG's API ({GROUP}/v1 clusters, databases) is not served by this cluster: {INSTALL_HINT}"
        ),
    )
}

/// What CloudNativePG says about a Cluster and its Databases, as readiness.
fn readiness(
    cluster: &Value,
    databases: &[(String, Option<Value>)],
    desired_instances: i32,
) -> Readiness {
    let status = cluster.get("status");
    let ready_instances = status
        .and_then(|s| s.get("readyInstances"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let phase = status
        .and_then(|s| s.get("phase"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(status) = status.filter(|_| !phase.is_empty()) else {
        return Readiness::not_ready(
            reasons::CREATING,
            "waiting for CloudNativePG to report on the Cluster (is its operator running?)",
        );
    };
    let ready = status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    let counts = format!("{ready_instances}/{desired_instances} instances ready");
    let mut detail = phase.to_string();
    if let Some(why) = status
        .get("phaseReason")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        detail = format!("{detail} ({why})");
    }
    if !ready.is_some_and(|c| c["status"] == "True") || phase != PHASE_HEALTHY {
        let reason = if ready_instances < i64::from(desired_instances) {
            reasons::REPLICAS_NOT_READY
        } else {
            reasons::CLUSTER_NOT_READY
        };
        return Readiness::not_ready(reason, format!("{counts}; CloudNativePG: {detail}"));
    }
    if let Some(roles) = status
        .pointer("/managedRolesStatus/cannotReconcile")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    {
        let names: Vec<&str> = roles.keys().map(String::as_str).collect();
        return Readiness::not_ready(
            reasons::CLUSTER_NOT_READY,
            format!(
                "CloudNativePG cannot reconcile role(s) {}",
                names.join(", ")
            ),
        );
    }
    for (name, live) in databases {
        let applied = live
            .as_ref()
            .and_then(|l| l.pointer("/status/applied"))
            .and_then(Value::as_bool);
        if applied != Some(true) {
            let message = live
                .as_ref()
                .and_then(|l| l.pointer("/status/message"))
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Readiness::not_ready(
                reasons::CLUSTER_NOT_READY,
                format!("database {name} is not created yet{message}"),
            );
        }
    }
    Readiness::ready(format!("{counts}; CloudNativePG: {detail}"))
}

#[async_trait]
impl ExternalClient for CloudNativePgDatabaseClusters {
    type Desired = DesiredDatabaseCluster;
    type Observed = ObservedDatabaseCluster;

    async fn observe(&self, d: &DesiredDatabaseCluster) -> Observed<Self> {
        self.require_installed().await?;
        let desired = self.desired_children(d, true);
        let drift = self.children.drift(&desired, &KINDS, &d.owner).await?;
        if drift.existing == 0 {
            return Ok(Observation::Missing);
        }
        let ns = Some(d.namespace.as_str());
        let cluster = self.children.get(CLUSTER, ns, &d.external_name).await?;
        let mut databases = Vec::new();
        for db in &d.databases {
            let live = self
                .children
                .get(DATABASE, ns, &database_object(&d.external_name, &db.name))
                .await?;
            databases.push((db.name.clone(), live));
        }
        let status = cluster.as_ref().and_then(|c| c.get("status"));
        let ready = status
            .and_then(|s| s.get("readyInstances"))
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(0);
        let service = status
            .and_then(|s| s.get("writeService"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| rw_service(&d.external_name));
        // The version running: the tag of the image CloudNativePG reports.
        let version = status
            .and_then(|s| s.get("image"))
            .and_then(Value::as_str)
            .and_then(|i| i.rsplit_once(':'))
            .map(|(_, tag)| tag.to_string())
            .unwrap_or_else(|| d.version.clone());
        let readiness = match &cluster {
            None => Readiness::not_ready(reasons::CREATING, "Cluster not created yet"),
            Some(c) => readiness(c, &databases, d.size.replicas),
        };
        Ok(Observation::Exists {
            up_to_date: drift.is_clean(),
            drift: drift.describe(),
            readiness,
            observed: ObservedDatabaseCluster {
                endpoint: Some(Endpoint {
                    host: format!("{service}.{}.svc.cluster.local", d.namespace),
                    port: PORT,
                }),
                replicas_desired: d.size.replicas,
                replicas_ready: ready,
                version: Some(version),
            },
        })
    }

    async fn create(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        self.apply(d).await
    }

    async fn update(
        &self,
        d: &DesiredDatabaseCluster,
        _observed: &ObservedDatabaseCluster,
    ) -> Result<(), ProviderError> {
        self.apply(d).await
    }

    /// Deletes the Cluster (CloudNativePG removes its pods, volumes and
    /// Services with it), the Database objects and the role Secrets.
    async fn delete(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        if self.installed().await? {
            self.children.delete_owned(&KINDS, &d.owner).await
        } else {
            // No CloudNativePG API: no Cluster can exist; the role Secrets can.
            self.children.delete_owned(&[SECRET], &d.owner).await
        }
    }

    /// Detaches the Cluster, Databases and role Secrets so garbage
    /// collection leaves them (and CloudNativePG keeps running the cluster).
    async fn orphan(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        let children = self.desired_children(d, false);
        if self.installed().await? {
            self.children.reapply_existing(&children).await
        } else {
            let secrets: Vec<Child> = children.into_iter().filter(|c| c.kind == SECRET).collect();
            self.children.reapply_existing(&secrets).await
        }
    }
}

#[async_trait]
impl DatabaseClusterClient for CloudNativePgDatabaseClusters {
    /// CloudNativePG runs a server per cluster, superuser included.
    fn has_own_superuser(&self) -> bool {
        true
    }

    async fn copy_from(
        &self,
        _target: &DesiredDatabaseCluster,
        _request: &crate::provider::CopyRequest,
    ) -> Result<crate::provider::CopyReport, ProviderError> {
        Err(ProviderError::terminal(
            reasons::UNSUPPORTED,
            "copies into a CloudNativePG cluster (provider kubernetes) are not supported yet; copy between DatabaseClusters of the postgres provider, or restore into the Cluster with CloudNativePG's own bootstrap",
        ))
    }
}

#[cfg(test)]
mod tests;
