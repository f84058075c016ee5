//! DatabaseClusters at Fly.io as the cluster `fly postgres create` builds
//! from machines (postgres-flex): `provider.fly.postgres: Flex`.
//!
//! Built in flyctl's order, each part observed first, so a reconcile cut
//! short part-way resumes where it stopped and nothing is made twice:
//! 1. the app `external_name` (`Apps_create`) on the Environment's
//!    `spec.network.name` (Fly fixes an app's network at creation: a
//!    different one later is a terminal `NetworkFixed`, never a silent
//!    re-create). The owner's UID is the create's `idempotency_key`, so a
//!    create retried after a lost answer returns the first app;
//! 2. a private Flycast address (`private_v6`), where the cluster is
//!    reached: `<app>.flycast:5432`;
//! 3. the app's secrets: `SU_PASSWORD` (the superuser password bulkhead
//!    generated and keeps in the credentials Secret), `REPL_PASSWORD` and
//!    `OPERATOR_PASSWORD` (generated once, set at Fly, never read back),
//!    `FLY_CONSUL_URL` (`enablePostgresConsul`), and `SSH_KEY`/`SSH_CERT`
//!    for `fly ssh` into a node: an Ed25519 key made here and the user
//!    certificate Fly's `issueCertificate` signs for it (principals `root`,
//!    `fly`, `postgres`; the app named), set as a pair;
//! 4. per node, a volume `pg_data` (encrypted, one per zone) and a machine
//!    `pg-<n>` mounting it at `/data`, running
//!    `flyio/postgres-flex:<latestImageTag>` with flyctl's checks (5500:
//!    `/flycheck/pg`, `/flycheck/role`, `/flycheck/vm`), services 5432 and
//!    5433 (`pg_tls`), metrics on 9187 and restart `always`. A volume left
//!    unattached (its machine destroyed) is mounted again before a new one
//!    is made.
//!
//! Nodes: `size.replicas` (presets as flyctl's: development 1 node, 1
//! shared CPU, 256 MB, 1 GB; production 3 nodes, 2 CPUs, 4 GB, 40 GB), all
//! in the first of `spec.regions` (else [`DEFAULT_REGION`]). A machine
//! destroyed or stopped behind bulkhead's back is made or started again;
//! nodes above `replicas` are destroyed with their volumes. Nodes record
//! the major they were made for (metadata `postgres_major`); another major
//! in the spec is a terminal `MajorVersionFixed`, as for Managed Postgres.
//!
//! Not built, and said so: databases and users (a flex server takes them
//! over SQL on Fly's private network, which bulkhead does not reach) and
//! password rotation (postgres-flex reads `SU_PASSWORD` only on first
//! boot) are a terminal `Unsupported`, before anything is created.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::database_cluster::DEFAULT_REGION;
use super::operations::{
    ENABLE_POSTGRES_CONSUL, ISSUE_CERTIFICATE, LATEST_IMAGE_TAG, ORGANIZATION_ID,
};
use super::{CallError, FlySession, Rest};
use crate::api::database_cluster::Endpoint;
use crate::api::environment::describe_network;
use crate::provider::{
    DatabaseClusterClient, DesiredDatabaseCluster, ExternalClient, Observation, Observed,
    ObservedDatabaseCluster, ProviderError, Readiness, SUPERUSER, Secret, generate_password,
};
use crate::reasons;

/// The image repository flyctl deploys flex clusters from.
pub const IMAGE_REPOSITORY: &str = "flyio/postgres-flex";
/// The volume every node mounts at `/data`.
pub const VOLUME_NAME: &str = "pg_data";
/// The secrets a flex cluster's machines read at boot.
pub const SECRET_NAMES: [&str; 6] = [
    "SU_PASSWORD",
    "REPL_PASSWORD",
    "OPERATOR_PASSWORD",
    "FLY_CONSUL_URL",
    "SSH_KEY",
    "SSH_CERT",
];
/// Fly's bound on a volume's size.
const VOLUME_GB_MAX: i32 = 500;
/// Machine metadata key carrying the PostgreSQL major a node was made for.
const MAJOR_METADATA: &str = "postgres_major";

pub struct FlyFlexPostgres {
    fly: FlySession,
    /// What `observe` listed, handed to the `update` that follows it in
    /// the same reconcile (a client lives for one reconcile), so a drift
    /// repair does not list the app's addresses, secrets, volumes and
    /// machines a second time.
    observed: std::sync::Mutex<Option<Cluster>>,
}

#[derive(Deserialize)]
struct AppAnswer {
    #[serde(default)]
    network: String,
    #[serde(default)]
    organization: Option<AppOrganization>,
}

#[derive(Deserialize)]
struct AppOrganization {
    #[serde(default)]
    slug: String,
}

#[derive(Deserialize)]
struct IpsAnswer {
    #[serde(default)]
    ips: Vec<IpEntry>,
}

#[derive(Deserialize)]
struct IpEntry {
    /// Only Flycast (private_v6) addresses belong to a network.
    #[serde(default)]
    network: Option<Value>,
}

#[derive(Deserialize)]
struct SecretsAnswer {
    #[serde(default)]
    secrets: Vec<SecretEntry>,
}

#[derive(Deserialize)]
struct SecretEntry {
    name: String,
}

#[derive(Deserialize, Clone)]
struct VolumeEntry {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    attached_machine_id: Option<String>,
}

#[derive(Deserialize, Clone)]
struct MachineEntry {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    config: Value,
}

impl MachineEntry {
    fn is_node(&self) -> bool {
        self.name.starts_with("pg-") && self.state != "destroyed"
    }

    fn volume(&self) -> Option<&str> {
        self.config
            .pointer("/mounts/0/volume")
            .and_then(Value::as_str)
    }
}

/// What Fly holds of one flex cluster.
#[derive(Clone)]
struct Cluster {
    private_ip: bool,
    secrets: Vec<String>,
    volumes: Vec<VolumeEntry>,
    nodes: Vec<MachineEntry>,
}

fn unexpected(operation: &str, e: serde_json::Error) -> ProviderError {
    ProviderError::terminal(
        reasons::UNEXPECTED_RESPONSE,
        format!("Fly {operation}: unexpected answer: {e}"),
    )
}

fn parse<T: serde::de::DeserializeOwned>(
    operation: &str,
    value: Value,
) -> Result<T, ProviderError> {
    serde_json::from_value(value).map_err(|e| unexpected(operation, e))
}

/// What flex cannot do for this spec, before anything is made.
fn check_supported(d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
    let unsupported = |what: &str| {
        Err(ProviderError::terminal(
            crate::reasons::UNSUPPORTED,
            format!(
                "fly.postgres: Flex clusters cannot take {what}: bulkhead does not reach Fly's private network, where a flex server takes them over SQL; use fly.postgres: Managed, or leave them out and use the superuser in the connection Secret"
            ),
        ))
    };
    if !d.databases.is_empty() || !d.users.is_empty() {
        return unsupported("spec.databases or spec.users");
    }
    if d.rotates_passwords {
        return unsupported(
            "spec.passwordRotation (postgres-flex reads SU_PASSWORD on first boot only)",
        );
    }
    Ok(())
}

/// The machine config of a node, as flyctl's `fly postgres create` makes
/// it.
fn machine_config(d: &DesiredDatabaseCluster, image: &str, volume: &str, major: &str) -> Value {
    json!({
        "image": image,
        "env": { "PRIMARY_REGION": region(d) },
        "guest": {
            "cpu_kind": "shared",
            "cpus": d.size.cpus,
            "memory_mb": d.size.memory_mib,
        },
        "mounts": [{ "volume": volume, "path": "/data" }],
        "metadata": {
            "fly-managed-postgres": "true",
            "fly_platform_version": "v2",
            MAJOR_METADATA: major,
        },
        "checks": {
            "pg": { "type": "http", "port": 5500, "path": "/flycheck/pg", "interval": "15s", "timeout": "10s" },
            "role": { "type": "http", "port": 5500, "path": "/flycheck/role", "interval": "15s", "timeout": "10s" },
            "vm": { "type": "http", "port": 5500, "path": "/flycheck/vm", "interval": "15s", "timeout": "10s" },
        },
        "services": [
            {
                "protocol": "tcp", "internal_port": 5432,
                "ports": [{ "port": 5432, "handlers": ["pg_tls"] }],
                "concurrency": { "type": "connections", "soft_limit": 1000, "hard_limit": 1000 },
            },
            {
                "protocol": "tcp", "internal_port": 5433,
                "ports": [{ "port": 5433, "handlers": ["pg_tls"] }],
                "concurrency": { "type": "connections", "soft_limit": 1000, "hard_limit": 1000 },
            },
        ],
        "metrics": { "port": 9187, "path": "/metrics" },
        "restart": { "policy": "always" },
    })
}

fn region(d: &DesiredDatabaseCluster) -> &str {
    d.regions
        .first()
        .map(String::as_str)
        .unwrap_or(DEFAULT_REGION)
}

fn major(d: &DesiredDatabaseCluster) -> &str {
    d.version.split('.').next().unwrap_or_default()
}

fn nodes(d: &DesiredDatabaseCluster) -> usize {
    usize::try_from(d.size.replicas.max(1)).unwrap_or(1)
}

/// What differs from the spec, by name (never a secret's value).
fn drift(d: &DesiredDatabaseCluster, c: &Cluster) -> Vec<String> {
    let mut drift = Vec::new();
    if !c.private_ip {
        drift.push("no Flycast address".to_string());
    }
    for name in SECRET_NAMES {
        if !c.secrets.iter().any(|s| s == name) {
            drift.push(format!("secret {name} missing"));
        }
    }
    let wanted = nodes(d);
    if c.nodes.len() != wanted {
        drift.push(format!("{} of {wanted} nodes", c.nodes.len()));
    }
    for m in &c.nodes {
        if m.state != "started" {
            drift.push(format!("machine {} is {}", m.name, m.state));
        }
    }
    drift
}

impl FlyFlexPostgres {
    pub fn new(fly: FlySession) -> Self {
        FlyFlexPostgres {
            fly,
            observed: std::sync::Mutex::new(None),
        }
    }

    fn app_path(d: &DesiredDatabaseCluster, rest: &str) -> String {
        format!("/v1/apps/{}{rest}", super::percent_encode(&d.external_name))
    }

    /// POSTs `body` to one of the app's paths (not retried: see [`Rest`]).
    async fn post_to_app(
        &self,
        d: &DesiredDatabaseCluster,
        path: &str,
        body: &Value,
        operation: &'static str,
    ) -> Result<Value, CallError> {
        let path = Self::app_path(d, path);
        self.fly
            .rest(Rest::post(&path, Some(body), operation))
            .await
    }

    /// The app, if it exists, checked to be this organization's and on the
    /// Environment's network.
    async fn app(&self, d: &DesiredDatabaseCluster) -> Result<Option<AppAnswer>, ProviderError> {
        let app = match self
            .fly
            .rest(Rest::get(&Self::app_path(d, ""), "Apps_show"))
            .await
        {
            Ok(v) => parse::<AppAnswer>("Apps_show", v)?,
            Err(CallError::NotFound(_)) => return Ok(None),
            Err(CallError::Provider(e)) => return Err(e),
        };
        let slug = super::database_cluster::org_slug(d)?;
        let owner = app.organization.as_ref().map(|o| o.slug.as_str());
        if owner.is_some_and(|o| o != slug) {
            return Err(ProviderError::terminal(
                reasons::APP_NAME_TAKEN,
                format!(
                    "the Fly app name {} belongs to another organization (app names are global at Fly); rename the DatabaseCluster or set the Environment's naming.suffix",
                    d.external_name
                ),
            ));
        }
        let wanted = d.network.as_deref().unwrap_or_default();
        if app.network != wanted {
            return Err(ProviderError::terminal(
                reasons::NETWORK_FIXED,
                format!(
                    "Fly app {} is on {}, the Environment names {}; Fly fixes an app's network when it is created: delete and re-create the DatabaseCluster to move it",
                    d.external_name,
                    describe_network(Some(&app.network)),
                    describe_network(Some(wanted))
                ),
            ));
        }
        Ok(Some(app))
    }

    async fn cluster(&self, d: &DesiredDatabaseCluster) -> Result<Cluster, ProviderError> {
        let get = |rest: &str, operation: &'static str| {
            let path = Self::app_path(d, rest);
            async move { self.fly.rest(Rest::get(&path, operation)).await }
        };
        let ips: IpsAnswer = parse(
            "App_IPAssignments_list",
            get("/ip_assignments", "App_IPAssignments_list").await?,
        )?;
        let secrets: SecretsAnswer = parse("Secrets_list", get("/secrets", "Secrets_list").await?)?;
        let volumes: Vec<VolumeEntry> =
            parse("Volumes_list", get("/volumes", "Volumes_list").await?)?;
        let machines: Vec<MachineEntry> =
            parse("Machines_list", get("/machines", "Machines_list").await?)?;
        Ok(Cluster {
            private_ip: ips.ips.iter().any(|ip| ip.network.is_some()),
            secrets: secrets.secrets.into_iter().map(|s| s.name).collect(),
            volumes: volumes
                .into_iter()
                .filter(|v| v.name == VOLUME_NAME && v.state != "destroyed")
                .collect(),
            nodes: machines.into_iter().filter(MachineEntry::is_node).collect(),
        })
    }

    async fn image(&self) -> Result<String, ProviderError> {
        let data = self
            .fly
            .graphql(&LATEST_IMAGE_TAG, json!({ "repository": IMAGE_REPOSITORY }))
            .await?;
        let tag = answered(&data, "/latestImageTag", "latestImageTag")?;
        Ok(format!("{IMAGE_REPOSITORY}:{tag}"))
    }

    /// Adds what is missing of the cluster, in flyctl's order.
    async fn converge(&self, d: &DesiredDatabaseCluster, c: Cluster) -> Result<(), ProviderError> {
        if !c.private_ip {
            let mut body =
                json!({ "type": "private_v6", "org_slug": super::database_cluster::org_slug(d)? });
            if let Some(network) = &d.network {
                body["network"] = json!(network);
            }
            self.post_to_app(d, "/ip_assignments", &body, "App_IPAssignments_create")
                .await?;
        }
        self.set_missing_secrets(d, &c.secrets).await?;
        let wanted = nodes(d);
        // Stopped nodes are started; missing ones made, on a volume left
        // unattached first.
        for m in c.nodes.iter().filter(|m| m.state == "stopped") {
            self.fly
                .rest(
                    Rest::post(
                        &Self::app_path(d, &format!("/machines/{}/start", m.id)),
                        None,
                        "Machines_start",
                    )
                    .retry_safe(),
                )
                .await?;
        }
        if c.nodes.len() < wanted {
            let image = self.image().await?;
            let mut free: Vec<&VolumeEntry> = c
                .volumes
                .iter()
                .filter(|v| {
                    let attached = v
                        .attached_machine_id
                        .as_deref()
                        .is_some_and(|id| c.nodes.iter().any(|m| m.id == id));
                    v.region == region(d)
                        && !attached
                        && !c.nodes.iter().any(|m| m.volume() == Some(v.id.as_str()))
                })
                .collect();
            let mut names = (0..).map(|i| format!("pg-{i}"));
            for _ in c.nodes.len()..wanted {
                let volume = match free.pop() {
                    Some(v) => v.id.clone(),
                    None => self.create_volume(d).await?,
                };
                let name = names
                    .find(|n| !c.nodes.iter().any(|m| &m.name == n))
                    .unwrap_or_default();
                let body = json!({
                    "name": name,
                    "region": region(d),
                    "config": machine_config(d, &image, &volume, major(d)),
                });
                self.post_to_app(d, "/machines", &body, "Machines_create")
                    .await?;
                info!(app = %d.external_name, machine = %name, "created flex Postgres node");
            }
        }
        // Above `replicas`: the highest-numbered nodes go, with their
        // volumes.
        let mut extra: Vec<&MachineEntry> = c.nodes.iter().collect();
        extra.sort_by(|a, b| b.name.cmp(&a.name));
        for m in extra.into_iter().take(c.nodes.len().saturating_sub(wanted)) {
            self.fly
                .rest(Rest::delete(
                    &Self::app_path(d, &format!("/machines/{}?force=true", m.id)),
                    "Machines_delete",
                ))
                .await
                .or_else(ignore_not_found)?;
            if let Some(volume) = m.volume() {
                self.fly
                    .rest(Rest::delete(
                        &Self::app_path(d, &format!("/volumes/{volume}")),
                        "Volume_delete",
                    ))
                    .await
                    .or_else(ignore_not_found)?;
            }
        }
        Ok(())
    }

    async fn create_volume(&self, d: &DesiredDatabaseCluster) -> Result<String, ProviderError> {
        let body = json!({
            "name": VOLUME_NAME,
            "region": region(d),
            "size_gb": d.size.storage_gib.clamp(1, VOLUME_GB_MAX),
            "encrypted": true,
            "require_unique_zone": true,
        });
        let created: VolumeEntry = parse(
            "Volumes_create",
            self.post_to_app(d, "/volumes", &body, "Volumes_create")
                .await?,
        )?;
        Ok(created.id)
    }

    /// A new Ed25519 key (OpenSSH private key format, as `SSH_KEY`) and
    /// the user certificate Fly issues for it in the cluster's
    /// organization (`SSH_CERT`), as flyctl makes the pair for `fly ssh`
    /// into a flex node. The key is made here and sent only as the secret.
    async fn ssh_pair(
        &self,
        d: &DesiredDatabaseCluster,
    ) -> Result<(Secret, String), ProviderError> {
        use ssh_key::rand_core::OsRng;
        use ssh_key::{Algorithm, LineEnding, PrivateKey};
        let local = |what: &str, e: ssh_key::Error| {
            ProviderError::transient(reasons::PROVIDER_ERROR, format!("{what}: {e}"))
        };
        let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(|e| local("generating the SSH key", e))?;
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| local("encoding the SSH public key", e))?;
        let slug = super::database_cluster::org_slug(d)?;
        let org = self
            .fly
            .graphql(&ORGANIZATION_ID, json!({ "slug": slug }))
            .await?;
        let org_id = answered(&org, "/organization/id", "organization")?;
        let issued = self
            .fly
            .graphql(
                &ISSUE_CERTIFICATE,
                json!({
                    "organizationId": org_id,
                    "appNames": [d.external_name],
                    "publicKey": public,
                }),
            )
            .await?;
        let certificate = answered(&issued, "/issueCertificate/certificate", "issueCertificate")?;
        let key = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| local("encoding the SSH key", e))?;
        Ok((Secret::new(key.as_str()), certificate.to_string()))
    }

    /// Sets the secrets the app lacks; values are sent and never kept.
    async fn set_missing_secrets(
        &self,
        d: &DesiredDatabaseCluster,
        present: &[String],
    ) -> Result<(), ProviderError> {
        let missing = |name: &str| !present.iter().any(|s| s == name);
        let mut values = serde_json::Map::new();
        if missing("SU_PASSWORD") {
            let su = d.passwords.get(SUPERUSER).ok_or_else(|| {
                ProviderError::transient(
                    reasons::PROVIDER_ERROR,
                    "the superuser password is not generated yet",
                )
            })?;
            values.insert("SU_PASSWORD".into(), json!(su.expose()));
        }
        for name in ["REPL_PASSWORD", "OPERATOR_PASSWORD"] {
            if missing(name) {
                values.insert(name.into(), json!(generate_password().expose()));
            }
        }
        if missing("FLY_CONSUL_URL") {
            let data = self
                .fly
                .graphql(
                    &ENABLE_POSTGRES_CONSUL,
                    json!({ "appId": d.external_name, "region": region(d) }),
                )
                .await?;
            let url = answered(
                &data,
                "/enablePostgresConsul/consulUrl",
                "enablePostgresConsul",
            )?;
            values.insert("FLY_CONSUL_URL".into(), json!(url));
        }
        if missing("SSH_KEY") || missing("SSH_CERT") {
            let (key, certificate) = self.ssh_pair(d).await?;
            values.insert("SSH_KEY".into(), json!(key.expose()));
            values.insert("SSH_CERT".into(), json!(certificate));
        }
        if values.is_empty() {
            return Ok(());
        }
        self.fly
            .rest(
                Rest::post(
                    &Self::app_path(d, "/secrets"),
                    Some(&json!({ "values": values })),
                    "Secrets_update",
                )
                .retry_safe(),
            )
            .await?;
        Ok(())
    }
}

/// The string at `pointer` in a GraphQL answer's data, or the terminal
/// error that says which operation answered without it.
fn answered<'v>(data: &'v Value, pointer: &str, operation: &str) -> Result<&'v str, ProviderError> {
    data.pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ProviderError::terminal(
                reasons::UNEXPECTED_RESPONSE,
                format!("Fly {operation}: answer without {pointer}"),
            )
        })
}

fn ignore_not_found(e: CallError) -> Result<Value, ProviderError> {
    match e {
        CallError::NotFound(_) => Ok(Value::Null),
        CallError::Provider(e) => Err(e),
    }
}

#[async_trait]
impl ExternalClient for FlyFlexPostgres {
    type Desired = DesiredDatabaseCluster;
    type Observed = ObservedDatabaseCluster;

    async fn observe(&self, d: &DesiredDatabaseCluster) -> Observed<Self> {
        check_supported(d)?;
        if self.app(d).await?.is_none() {
            return Ok(Observation::Missing);
        }
        let cluster = self.cluster(d).await?;
        let version = cluster
            .nodes
            .iter()
            .find_map(|m| m.config.pointer(&format!("/metadata/{MAJOR_METADATA}")))
            .and_then(Value::as_str)
            .map(str::to_string);
        super::database_cluster::check_major_unchanged(
            "flex Postgres",
            &d.external_name,
            version.as_deref(),
            major(d),
        )?;
        let drift = drift(d, &cluster);
        let started = cluster
            .nodes
            .iter()
            .filter(|m| m.state == "started")
            .count();
        let wanted = nodes(d);
        let readiness = if started >= wanted && cluster.private_ip {
            Readiness::ready(format!(
                "flex Postgres {}: {started} of {wanted} nodes started",
                d.external_name
            ))
        } else {
            Readiness::not_ready(
                crate::reasons::REPLICAS_NOT_READY,
                format!(
                    "flex Postgres {}: {started} of {wanted} nodes started",
                    d.external_name
                ),
            )
        };
        let private_ip = cluster.private_ip;
        if let Ok(mut observed) = self.observed.lock() {
            *observed = Some(cluster);
        }
        Ok(Observation::Exists {
            up_to_date: drift.is_empty(),
            drift,
            readiness,
            observed: ObservedDatabaseCluster {
                endpoint: private_ip.then(|| Endpoint {
                    host: format!("{}.flycast", d.external_name),
                    port: 5432,
                }),
                replicas_desired: i32::try_from(wanted).unwrap_or(i32::MAX),
                replicas_ready: i32::try_from(started).unwrap_or(i32::MAX),
                version,
            },
        })
    }

    /// Called when observe found no app. The create carries an
    /// idempotency key, so it is safe even if the app appeared meanwhile:
    /// Fly returns the one this key made, or refuses a name someone else
    /// holds.
    async fn create(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        check_supported(d)?;
        {
            let body = json!({
                "name": d.external_name,
                "org_slug": super::database_cluster::org_slug(d)?,
                "network": d.network.clone().unwrap_or_default(),
                // A retry of this create (after a lost answer) returns the
                // app the first one made.
                "idempotency_key": format!("bulkhead-{}", d.owner.uid),
            });
            self.fly.rest(Rest::post("/v1/apps", Some(&body), "Apps_create").retry_safe())
                .await
                .map_err(|e| match e {
                    CallError::Provider(ProviderError::Terminal { message, .. })
                        if message.contains("already taken") =>
                    {
                        ProviderError::terminal(
                            reasons::APP_NAME_TAKEN,
                            format!(
                                "the Fly app name {} is taken (app names are global at Fly); rename the DatabaseCluster or set the Environment's naming.suffix",
                                d.external_name
                            ),
                        )
                    }
                    other => other.into(),
                })?;
            info!(app = %d.external_name, "created flex Postgres app");
        }
        // An app made by this key earlier may be on another network.
        self.app(d).await?;
        let cluster = self.cluster(d).await?;
        self.converge(d, cluster).await
    }

    async fn update(
        &self,
        d: &DesiredDatabaseCluster,
        _observed: &ObservedDatabaseCluster,
    ) -> Result<(), ProviderError> {
        let listed = self.observed.lock().ok().and_then(|mut o| o.take());
        let cluster = match listed {
            Some(cluster) => cluster,
            None => self.cluster(d).await?,
        };
        self.converge(d, cluster).await
    }

    /// Deletes the app; Fly destroys its machines, volumes and addresses
    /// with it.
    async fn delete(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        match self
            .fly
            .rest(Rest::delete(&Self::app_path(d, ""), "Apps_delete"))
            .await
        {
            Ok(_) | Err(CallError::NotFound(_)) => Ok(()),
            Err(CallError::Provider(e)) => Err(e),
        }
    }
}

#[async_trait]
impl DatabaseClusterClient for FlyFlexPostgres {
    /// The superuser is bulkhead's: it set `SU_PASSWORD`.
    fn has_own_superuser(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database_cluster::ResolvedSize;

    fn desired(replicas: i32) -> DesiredDatabaseCluster {
        let mut d = crate::provider::test_desired("orders-stage");
        d.size = ResolvedSize {
            cpus: 2,
            memory_mib: 4096,
            storage_gib: 40,
            replicas,
        };
        d
    }

    #[test]
    fn a_node_is_configured_as_flyctl_configures_it() {
        let config = machine_config(&desired(3), "flyio/postgres-flex:v1", "vol_1", "16");
        assert_eq!(
            config["mounts"],
            json!([{ "volume": "vol_1", "path": "/data" }])
        );
        assert_eq!(
            config["guest"],
            json!({ "cpu_kind": "shared", "cpus": 2, "memory_mb": 4096 })
        );
        assert_eq!(config["checks"]["pg"]["path"], "/flycheck/pg");
        assert_eq!(config["restart"]["policy"], "always");
        let ports: Vec<&Value> = config["services"]
            .as_array()
            .map(|s| s.iter().map(|s| &s["internal_port"]).collect())
            .unwrap_or_default();
        assert_eq!(ports, [&json!(5432), &json!(5433)]);
        assert_eq!(config["metadata"][MAJOR_METADATA], "16");
    }

    #[test]
    fn drift_names_what_is_missing_and_never_a_value() {
        let node = |name: &str, state: &str| MachineEntry {
            id: format!("m-{name}"),
            name: name.into(),
            state: state.into(),
            config: json!({}),
        };
        let cluster = Cluster {
            private_ip: false,
            secrets: vec!["SU_PASSWORD".into()],
            volumes: vec![],
            nodes: vec![node("pg-0", "started"), node("pg-1", "stopped")],
        };
        assert_eq!(
            drift(&desired(3), &cluster),
            [
                "no Flycast address",
                "secret REPL_PASSWORD missing",
                "secret OPERATOR_PASSWORD missing",
                "secret FLY_CONSUL_URL missing",
                "secret SSH_KEY missing",
                "secret SSH_CERT missing",
                "2 of 3 nodes",
                "machine pg-1 is stopped",
            ]
        );
    }

    #[test]
    fn databases_users_and_rotation_are_refused_before_anything_is_made() {
        let mut d = desired(1);
        assert!(check_supported(&d).is_ok());
        d.rotates_passwords = true;
        let err = check_supported(&d).err().map(|e| e.reason());
        assert_eq!(err, Some(crate::reasons::UNSUPPORTED));
    }
}
