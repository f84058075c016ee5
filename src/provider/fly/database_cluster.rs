//! DatabaseClusters at Fly.io as Managed Postgres clusters (`/v1/postgres`
//! of the Machines API).
//!
//! - The cluster is named `desired.external_name` (the DatabaseCluster's
//!   name plus the Environment's suffix) and found by that name in the Fly
//!   organization's `Postgres_list`; Fly gives it an ID, which every other
//!   call takes.
//! - Region: the first of `spec.regions`, else [`DEFAULT_REGION`].
//! - `pg_major_version`: the major of `spec.version`; Fly offers only
//!   [`SUPPORTED_MAJORS`], anything else is a terminal `UnsupportedVersion`.
//!   Fly has no in-place major upgrade, so a cluster running another major
//!   than the spec's is a terminal `MajorVersionFixed` (both forms), never
//!   a re-create that would lose the data.
//! - `disk_size_gb`: `size.storageGiB` clamped to Fly's 10..=1000.
//! - Plan, the smallest whose CPUs and memory cover `size` (Fly's plan
//!   sizes): `basic` 1 CPU/1 GiB, `starter` 2/2 GiB, `launch` 4/8 GiB,
//!   `scale` 8/32 GiB, `performance` above.
//! - Users get the Fly role of their privileges: owner → `schema_admin`,
//!   readWrite → `writer`, readOnly → `reader`. Fly generates their
//!   passwords; [`DatabaseClusterClient::issued_password`] hands them back.
//! - Endpoint: `endpoints.primary.pooler` (PgBouncer), because apps on
//!   Fly are many short-lived machines and Fly recommends the pooler for
//!   them; `direct` only when Fly reports no pooler.
//!
//! Create is asynchronous: the cluster is `creating` until Fly says `ready`,
//! and its databases and users can only be made once it is.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{CallError, FlySession, Rest};
use crate::api::database_cluster::{Endpoint, Privileges, ResolvedSize};
use crate::provider::{
    DatabaseClusterClient, DesiredDatabaseCluster, ExternalClient, Observation, Observed,
    ObservedDatabaseCluster, ProviderError, Readiness, Secret,
};
use crate::reasons;

/// Region of a cluster whose spec names none (Fly's own default).
pub const DEFAULT_REGION: &str = "iad";
/// PostgreSQL majors Managed Postgres offers.
pub const SUPPORTED_MAJORS: &[&str] = &["16", "17"];
/// Fly's bounds on `disk_size_gb`.
const DISK_GB_MIN: i32 = 10;
const DISK_GB_MAX: i32 = 1000;

/// The plan for a size: the smallest whose CPUs and memory cover it.
pub fn plan_for(size: &ResolvedSize) -> &'static str {
    const PLANS: &[(&str, i32, i32)] = &[
        ("basic", 1, 1024),
        ("starter", 2, 2048),
        ("launch", 4, 8192),
        ("scale", 8, 32768),
    ];
    PLANS
        .iter()
        .find(|(_, cpus, memory)| size.cpus <= *cpus && size.memory_mib <= *memory)
        .map(|(plan, _, _)| *plan)
        .unwrap_or("performance")
}

/// `disk_size_gb` for a size.
pub fn disk_size_for(size: &ResolvedSize) -> i32 {
    size.storage_gib.clamp(DISK_GB_MIN, DISK_GB_MAX)
}

/// The Fly role of a user's privileges.
pub fn role_for(privileges: Privileges) -> &'static str {
    match privileges {
        Privileges::Owner => "schema_admin",
        Privileges::ReadWrite => "writer",
        Privileges::ReadOnly => "reader",
    }
}

/// Refuses a major other than the one the cluster runs (`running`, when
/// Fly says): Fly upgrades neither form in place, and a re-create would
/// lose the data.
pub fn check_major_unchanged(
    form: &str,
    name: &str,
    running: Option<&str>,
    wanted: &str,
) -> Result<(), ProviderError> {
    match running {
        Some(running) if running != wanted => Err(ProviderError::terminal(
            reasons::MAJOR_VERSION_FIXED,
            format!(
                "{form} {name} runs PostgreSQL {running}; spec.version asks for {wanted}, and Fly has no in-place major upgrade: nothing was changed. Set spec.version back to {running}, or make a new DatabaseCluster on {wanted} and move the data"
            ),
        )),
        _ => Ok(()),
    }
}

/// The major version Fly is asked for, or why it cannot be.
pub fn major_version(version: &str) -> Result<&str, ProviderError> {
    let major = version.split('.').next().unwrap_or_default().trim();
    if SUPPORTED_MAJORS.contains(&major) {
        Ok(major)
    } else {
        Err(ProviderError::terminal(
            reasons::UNSUPPORTED_VERSION,
            format!(
                "Fly Managed Postgres offers PostgreSQL {} only; spec.version is {version:?}",
                SUPPORTED_MAJORS.join(" and ")
            ),
        ))
    }
}

/// One cluster's client: the process's Fly API and the credentials the
/// platform team named for this Environment.
pub struct FlyManagedPostgres {
    fly: FlySession,
    /// The cluster's Fly ID once found or created. A client serves one
    /// reconcile, so observe, update and the password lookup share one
    /// `Postgres_list` instead of one each.
    found: std::sync::Mutex<Option<String>>,
}

#[derive(Deserialize)]
struct ListAnswer {
    #[serde(default)]
    data: Vec<ClusterSummary>,
}

#[derive(Deserialize)]
struct ClusterSummary {
    id: String,
    name: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct ShowAnswer {
    data: ClusterDetail,
}

#[derive(Deserialize)]
struct ClusterDetail {
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    pg_major_version: Option<String>,
    #[serde(default)]
    replicas: Option<i32>,
    #[serde(default)]
    endpoints: Option<Endpoints>,
}

#[derive(Deserialize)]
struct Endpoints {
    primary: Option<PrimaryEndpoints>,
}

#[derive(Deserialize)]
struct PrimaryEndpoints {
    pooler: Option<HostPort>,
    direct: Option<HostPort>,
}

#[derive(Deserialize, Clone)]
struct HostPort {
    host: String,
    port: i32,
}

#[derive(Deserialize)]
struct NamedList<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
}

#[derive(Deserialize)]
struct DatabaseEntry {
    name: String,
}

#[derive(Deserialize)]
struct UserEntry {
    username: String,
    #[serde(default)]
    role: String,
}

#[derive(Deserialize)]
struct CredentialsAnswer {
    data: CredentialsData,
}

#[derive(Deserialize)]
struct CredentialsData {
    password: String,
}

fn unexpected(operation: &str, e: serde_json::Error) -> ProviderError {
    ProviderError::terminal(
        reasons::UNEXPECTED_RESPONSE,
        format!("Fly {operation}: unexpected answer: {e}"),
    )
}

/// Path segments are names checked by the CRD's patterns or IDs Fly
/// issued; encoded anyway.
fn segment(value: &str) -> String {
    super::percent_encode(value)
}

impl FlyManagedPostgres {
    pub fn new(fly: FlySession) -> Self {
        FlyManagedPostgres {
            fly,
            found: std::sync::Mutex::new(None),
        }
    }

    /// Creates a sub-resource (a database, a user) by POSTing `body` to
    /// `path`; one that already exists counts as made. Sent as not
    /// idempotent, so the client repeats it only when Fly refused it (429);
    /// a later reconcile's repeat meets "already exists", which is done.
    async fn create_sub(
        &self,
        path: &str,
        body: &Value,
        operation: &'static str,
    ) -> Result<(), ProviderError> {
        tolerate(
            self.fly.rest(Rest::post(path, Some(body), operation)).await,
            true,
        )
    }

    /// DELETEs `path`; what is already gone counts as deleted.
    async fn delete_gone_ok(
        &self,
        path: &str,
        operation: &'static str,
    ) -> Result<(), ProviderError> {
        tolerate(self.fly.rest(Rest::delete(path, operation)).await, false)
    }

    fn remember(&self, id: Option<String>) {
        if let Ok(mut found) = self.found.lock() {
            *found = id;
        }
    }

    /// The live cluster named `external_name` in the org, if any.
    async fn find(&self, d: &DesiredDatabaseCluster) -> Result<Option<String>, ProviderError> {
        if let Some(id) = self.found.lock().ok().and_then(|f| f.clone()) {
            return Ok(Some(id));
        }
        let slug = org_slug(d)?;
        let data = self
            .fly
            .rest(Rest::get("/v1/postgres", "Postgres_list").query(&[("org_slug", slug)]))
            .await?;
        let list: ListAnswer =
            serde_json::from_value(data).map_err(|e| unexpected("Postgres_list", e))?;
        let id = list
            .data
            .into_iter()
            .find(|c| c.name == d.external_name && c.status != "deleted")
            .map(|c| c.id);
        self.remember(id.clone());
        Ok(id)
    }

    async fn show(&self, id: &str) -> Result<Option<ClusterDetail>, ProviderError> {
        match self
            .fly
            .rest(Rest::get(
                &format!("/v1/postgres/{}", segment(id)),
                "Postgres_show",
            ))
            .await
        {
            Ok(data) => Ok(Some(
                serde_json::from_value::<ShowAnswer>(data)
                    .map_err(|e| unexpected("Postgres_show", e))?
                    .data,
            )),
            Err(CallError::NotFound(_)) => Ok(None),
            Err(CallError::Provider(e)) => Err(e),
        }
    }

    async fn databases(&self, id: &str) -> Result<Vec<String>, ProviderError> {
        let list: Vec<DatabaseEntry> = self
            .listed(id, "databases", "Postgres_databases_list")
            .await?;
        Ok(list.into_iter().map(|d| d.name).collect())
    }

    async fn users(&self, id: &str) -> Result<Vec<(String, String)>, ProviderError> {
        let list: Vec<UserEntry> = self.listed(id, "users", "Postgres_users_list").await?;
        Ok(list.into_iter().map(|u| (u.username, u.role)).collect())
    }

    /// One of a cluster's lists (`/v1/postgres/{id}/<what>`).
    async fn listed<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        what: &str,
        operation: &'static str,
    ) -> Result<Vec<T>, ProviderError> {
        let path = format!("/v1/postgres/{}/{what}", segment(id));
        let data = self.fly.rest(Rest::get(&path, operation)).await?;
        let list: NamedList<T> =
            serde_json::from_value(data).map_err(|e| unexpected(operation, e))?;
        Ok(list.data)
    }

    /// What differs between the cluster's databases and users and the spec
    /// (names and roles, never a password).
    fn drift(
        d: &DesiredDatabaseCluster,
        databases: &[String],
        users: &[(String, String)],
    ) -> Vec<String> {
        let mut drift = Vec::new();
        for db in &d.databases {
            if !databases.contains(&db.name) {
                drift.push(format!("database {} missing", db.name));
            }
        }
        for db in databases {
            // `postgres` is Fly's own and never declared.
            if db != "postgres" && !d.databases.iter().any(|s| &s.name == db) {
                drift.push(format!("database {db} not in spec"));
            }
        }
        for user in &d.users {
            match users.iter().find(|(name, _)| *name == user.name) {
                None => drift.push(format!("user {} missing", user.name)),
                Some((_, role)) if role != role_for(user.privileges) => drift.push(format!(
                    "user {} has role {role}, wants {}",
                    user.name,
                    role_for(user.privileges)
                )),
                Some(_) => {}
            }
        }
        for (name, _) in users {
            if !d.users.iter().any(|u| &u.name == name) {
                drift.push(format!("user {name} not in spec"));
            }
        }
        drift
    }

    /// The ID of the cluster, which must exist for `update`.
    async fn require(&self, d: &DesiredDatabaseCluster) -> Result<String, ProviderError> {
        self.find(d).await?.ok_or_else(|| {
            ProviderError::transient(
                reasons::PROVIDER_ERROR,
                format!("Fly Managed Postgres cluster {} is gone", d.external_name),
            )
        })
    }
}

/// The Fly organization of the cluster: the slug its Environment's
/// Organization reported.
pub(super) fn org_slug(d: &DesiredDatabaseCluster) -> Result<&str, ProviderError> {
    d.organization_slug.as_deref().ok_or_else(|| {
        ProviderError::transient(
            reasons::ORGANIZATION_NOT_READY,
            format!(
                "Environment {} has no Fly organization slug yet; waiting for Organization {}",
                d.environment, d.organization
            ),
        )
    })
}

/// A sub-resource call whose target is already as wanted: create of what
/// exists, delete of what is gone.
fn tolerate(result: Result<Value, CallError>, exists_ok: bool) -> Result<(), ProviderError> {
    match result {
        Ok(_) => Ok(()),
        Err(CallError::NotFound(_)) if !exists_ok => Ok(()),
        Err(CallError::Provider(ProviderError::Transient { message, .. }))
            if exists_ok && message.contains("already exists") =>
        {
            Ok(())
        }
        Err(CallError::Provider(ProviderError::Terminal { message, .. }))
            if exists_ok && message.contains("already exists") =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl ExternalClient for FlyManagedPostgres {
    type Desired = DesiredDatabaseCluster;
    type Observed = ObservedDatabaseCluster;

    async fn observe(&self, d: &DesiredDatabaseCluster) -> Observed<Self> {
        let major = major_version(&d.version)?;
        let Some(id) = self.find(d).await? else {
            return Ok(Observation::Missing);
        };
        let Some(cluster) = self.show(&id).await? else {
            // Deleted since the list: forget it, so create looks again.
            self.remember(None);
            return Ok(Observation::Missing);
        };
        check_major_unchanged(
            "Fly Managed Postgres cluster",
            &d.external_name,
            cluster.pg_major_version.as_deref(),
            major,
        )?;
        let endpoint = cluster
            .endpoints
            .and_then(|e| e.primary)
            .and_then(|p| p.pooler.or(p.direct))
            .map(|hp| Endpoint {
                host: hp.host,
                port: hp.port,
            });
        let replicas = cluster.replicas.unwrap_or(1);
        let ready = cluster.status == "ready";
        let observed = ObservedDatabaseCluster {
            endpoint,
            replicas_desired: replicas,
            replicas_ready: if ready { replicas } else { 0 },
            version: cluster.pg_major_version.clone(),
        };
        let (readiness, drift) = match cluster.status.as_str() {
            "ready" => {
                let databases = self.databases(&cluster.id).await?;
                let users = self.users(&cluster.id).await?;
                (
                    Readiness::ready(format!(
                        "Fly Managed Postgres cluster {} is ready",
                        d.external_name
                    )),
                    Self::drift(d, &databases, &users),
                )
            }
            "failed" | "error" => (
                Readiness::not_ready(
                    reasons::PROVISIONING_FAILED,
                    format!(
                        "Fly reports Managed Postgres cluster {} as {}; delete it at Fly or recreate the DatabaseCluster",
                        d.external_name, cluster.status
                    ),
                ),
                Vec::new(),
            ),
            other => (
                Readiness::not_ready(
                    reasons::CREATING,
                    format!(
                        "Fly Managed Postgres cluster {} is {other}",
                        d.external_name
                    ),
                ),
                Vec::new(),
            ),
        };
        Ok(Observation::Exists {
            // Databases and users can be converged only once it is ready.
            up_to_date: drift.is_empty(),
            drift,
            readiness,
            observed,
        })
    }

    async fn create(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        let version = major_version(&d.version)?;
        if self.find(d).await?.is_some() {
            return Ok(());
        }
        let slug = org_slug(d)?;
        let region = d
            .regions
            .first()
            .map(String::as_str)
            .unwrap_or(DEFAULT_REGION);
        let body = json!({
            "org_slug": slug,
            "name": d.external_name,
            "plan": plan_for(&d.size),
            "region": region,
            "pg_major_version": version,
            "disk_size_gb": disk_size_for(&d.size),
        });
        // Not idempotent (a retried create could make a second cluster):
        // only a 429 is retried here; otherwise the next reconcile looks
        // the cluster up by name first.
        let created = self
            .fly
            .rest(Rest::post("/v1/postgres", Some(&body), "Postgres_create"))
            .await?;
        // The answer is the cluster (`data.id`); without one the next
        // lookup by name finds it.
        self.remember(
            created
                .pointer("/data/id")
                .and_then(Value::as_str)
                .map(str::to_string),
        );
        info!(cluster = %d.external_name, org = slug, "created Fly Managed Postgres cluster");
        Ok(())
    }

    async fn update(
        &self,
        d: &DesiredDatabaseCluster,
        _observed: &ObservedDatabaseCluster,
    ) -> Result<(), ProviderError> {
        let id = self.require(d).await?;
        let databases = self.databases(&id).await?;
        let users = self.users(&id).await?;
        let base = format!("/v1/postgres/{}", segment(&id));
        for db in &d.databases {
            if !databases.contains(&db.name) {
                let body = json!({ "name": db.name });
                self.create_sub(
                    &format!("{base}/databases"),
                    &body,
                    "Postgres_databases_create",
                )
                .await?;
            }
        }
        for user in &d.users {
            let role = role_for(user.privileges);
            match users.iter().find(|(name, _)| *name == user.name) {
                None => {
                    let body = json!({ "username": user.name, "role": role });
                    self.create_sub(&format!("{base}/users"), &body, "Postgres_users_create")
                        .await?;
                }
                Some((_, current)) if current != role => {
                    let body = json!({ "role": role });
                    self.fly
                        .rest(Rest::patch(
                            &format!("{base}/users/{}", segment(&user.name)),
                            Some(&body),
                            "Postgres_users_update_role",
                        ))
                        .await?;
                }
                Some(_) => {}
            }
        }
        // Removed from the spec: dropped, as the postgres provider drops
        // roles and databases no longer declared.
        for (name, _) in &users {
            if !d.users.iter().any(|u| &u.name == name) {
                self.delete_gone_ok(
                    &format!("{base}/users/{}", segment(name)),
                    "Postgres_users_delete",
                )
                .await?;
            }
        }
        for name in &databases {
            if name != "postgres" && !d.databases.iter().any(|s| &s.name == name) {
                self.delete_gone_ok(
                    &format!("{base}/databases/{}", segment(name)),
                    "Postgres_databases_delete",
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn delete(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        let Some(id) = self.find(d).await? else {
            return Ok(());
        };
        self.remember(None);
        self.delete_gone_ok(&format!("/v1/postgres/{}", segment(&id)), "Postgres_delete")
            .await
    }
}

#[async_trait]
impl DatabaseClusterClient for FlyManagedPostgres {
    fn server_identity(&self) -> Option<String> {
        None
    }

    async fn issued_password(
        &self,
        d: &DesiredDatabaseCluster,
        user: &str,
        rotate: bool,
    ) -> Result<Option<Secret>, ProviderError> {
        let id = self.require(d).await?;
        let base = format!("/v1/postgres/{}/users/{}", segment(&id), segment(user));
        if rotate {
            self.fly
                .rest(Rest::post(
                    &format!("{base}/rotate_password"),
                    Some(&json!({})),
                    "Postgres_users_rotate_password",
                ))
                .await?;
        }
        let data = self
            .fly
            .rest(Rest::get(
                &format!("{base}/credentials"),
                "Postgres_users_credentials",
            ))
            .await?;
        // Parsed into a Secret at once; the error names no field value.
        let answer: CredentialsAnswer = serde_json::from_value(data).map_err(|_| {
            ProviderError::terminal(
                reasons::UNEXPECTED_RESPONSE,
                "Fly Postgres_users_credentials: unexpected answer",
            )
        })?;
        Ok(Some(Secret::new(answer.data.password)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(cpus: i32, memory_mib: i32, storage_gib: i32) -> ResolvedSize {
        ResolvedSize {
            cpus,
            memory_mib,
            storage_gib,
            replicas: 1,
        }
    }

    #[test]
    fn sizes_map_to_the_smallest_plan_that_covers_them() {
        assert_eq!(plan_for(&size(1, 256, 1)), "basic");
        assert_eq!(plan_for(&size(2, 2048, 1)), "starter");
        assert_eq!(plan_for(&size(2, 4096, 1)), "launch");
        assert_eq!(plan_for(&size(8, 16384, 1)), "scale");
        assert_eq!(plan_for(&size(16, 65536, 1)), "performance");
    }

    #[test]
    fn disk_is_clamped_to_flys_bounds() {
        assert_eq!(disk_size_for(&size(1, 1, 1)), 10);
        assert_eq!(disk_size_for(&size(1, 1, 40)), 40);
        assert_eq!(disk_size_for(&size(1, 1, 5000)), 1000);
    }

    #[test]
    fn a_major_other_than_the_running_one_is_refused() {
        assert!(check_major_unchanged("c", "db", Some("16"), "16").is_ok());
        assert!(check_major_unchanged("c", "db", None, "17").is_ok());
        let err = check_major_unchanged("Fly Managed Postgres cluster", "db", Some("16"), "17")
            .expect_err("16 → 17");
        assert_eq!(err.reason(), "MajorVersionFixed");
        assert!(err.is_terminal());
        let message = err.to_string();
        assert!(
            message.contains("runs PostgreSQL 16") && message.contains("asks for 17"),
            "{message}"
        );
    }

    #[test]
    fn only_majors_fly_offers_are_accepted() {
        assert_eq!(major_version("16").ok(), Some("16"));
        assert_eq!(major_version("17.2").ok(), Some("17"));
        let err = major_version("15").err().map(|e| e.reason());
        assert_eq!(err, Some(reasons::UNSUPPORTED_VERSION));
    }
}
