//! DatabaseCluster in the cluster: a StatefulSet running PostgreSQL (the
//! official image), a headless Service for the pods, a Service for the
//! primary, a Secret with the generated passwords and a ConfigMap with the
//! scripts that create the databases and users and start replicas as
//! streaming standbys of pod 0.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::Child;
use super::children::{CONFIG_MAP, ChildKind, Children, SECRET, SERVICE, STATEFUL_SET};
use crate::api::database_cluster::{Endpoint, Privileges};
use crate::api::{DeletionPolicy, LABEL_DATABASE_CLUSTER};
use crate::provider::{
    DatabaseClusterClient, DesiredDatabaseCluster, ExternalClient, Observation,
    ObservedDatabaseCluster, ProviderError, Readiness, SUPERUSER,
};
use crate::reconcile::reasons;

const KINDS: [ChildKind; 4] = [STATEFUL_SET, SERVICE, SECRET, CONFIG_MAP];
const PORT: i32 = 5432;

/// Kubernetes backend for DatabaseClusters.
pub struct KubernetesDatabaseClusters {
    children: Children,
    /// Image repository; the tag is the cluster's version (`postgres:16`).
    image_repository: String,
}

/// Name of the headless Service that gives the pods stable DNS names.
pub fn headless_service(external_name: &str) -> String {
    format!("{external_name}-hl")
}

/// Name of the Secret holding the server's passwords.
pub fn auth_secret(external_name: &str) -> String {
    format!("{external_name}-auth")
}

fn init_config_map(external_name: &str) -> String {
    format!("{external_name}-init")
}

/// A memory quantity in the canonical form the apiserver stores (4096 MiB
/// is kept as `4Gi`), so drift detection compares like with like.
fn memory_quantity(mib: i32) -> String {
    if mib % 1024 == 0 {
        format!("{}Gi", mib / 1024)
    } else {
        format!("{mib}Mi")
    }
}

/// Environment variable carrying a user's password into the pod.
fn password_env(user: &str) -> String {
    format!("PW_{}", user.to_ascii_uppercase())
}

impl KubernetesDatabaseClusters {
    pub fn new(children: Children, image_repository: impl Into<String>) -> Self {
        KubernetesDatabaseClusters {
            children,
            image_repository: image_repository.into(),
        }
    }

    fn desired_children(&self, d: &DesiredDatabaseCluster, owned: bool) -> Vec<Child> {
        let ext = d.external_name.as_str();
        let ns = Some(d.namespace.as_str());
        let selector =
            json!({ LABEL_DATABASE_CLUSTER: d.owner.name, "app.kubernetes.io/instance": ext });

        let mut secret_data = serde_json::Map::new();
        for (user, password) in &d.passwords {
            let key = if user == SUPERUSER {
                "postgres".to_string()
            } else {
                user.clone()
            };
            // `data` (base64), not `stringData`: the apiserver stores only
            // `data`, so that is what drift is compared against.
            let encoded = serde_json::to_value(k8s_openapi::ByteString(
                password.expose().as_bytes().to_vec(),
            ))
            .unwrap_or(Value::Null);
            secret_data.insert(key, encoded);
        }
        let secret = Child::new(
            SECRET,
            ns,
            &auth_secret(ext),
            &d.owner,
            owned,
            json!({ "type": "Opaque", "data": secret_data }),
        );

        let services = vec![
            Child::new(
                SERVICE,
                ns,
                &headless_service(ext),
                &d.owner,
                owned,
                json!({ "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": true,
                    "selector": selector,
                    "ports": [{ "name": "postgres", "port": PORT, "targetPort": PORT }],
                }}),
            ),
            Child::new(
                SERVICE,
                ns,
                ext,
                &d.owner,
                owned,
                json!({ "spec": {
                    "type": "ClusterIP",
                    "selector": { "statefulset.kubernetes.io/pod-name": format!("{ext}-0") },
                    "ports": [{ "name": "postgres", "port": PORT, "targetPort": PORT }],
                }}),
            ),
        ];

        let config = Child::new(
            CONFIG_MAP,
            ns,
            &init_config_map(ext),
            &d.owner,
            owned,
            json!({ "data": { "init.sh": init_script(d), "start.sh": start_script(ext) } }),
        );

        let mut env = vec![
            json!({ "name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata" }),
            json!({ "name": "POSTGRES_PASSWORD", "valueFrom": { "secretKeyRef": { "name": auth_secret(ext), "key": "postgres" } } }),
        ];
        for u in &d.users {
            env.push(json!({ "name": password_env(&u.name), "valueFrom": { "secretKeyRef": { "name": auth_secret(ext), "key": u.name } } }));
        }
        let size = &d.size;
        let resources = json!({
            "requests": { "cpu": size.cpus.to_string(), "memory": memory_quantity(size.memory_mib) },
            "limits": { "memory": memory_quantity(size.memory_mib) },
        });
        let retention = match d.deletion_policy {
            DeletionPolicy::Delete => "Delete",
            DeletionPolicy::Orphan => "Retain",
        };
        let statefulset = Child::new(
            STATEFUL_SET,
            ns,
            ext,
            &d.owner,
            owned,
            json!({ "spec": {
                "replicas": size.replicas,
                "serviceName": headless_service(ext),
                "podManagementPolicy": "OrderedReady",
                "selector": { "matchLabels": selector },
                "persistentVolumeClaimRetentionPolicy": { "whenDeleted": retention, "whenScaled": "Retain" },
                "template": {
                    "metadata": { "labels": selector },
                    "spec": {
                        "securityContext": { "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999, "runAsNonRoot": true,
                                              "seccompProfile": { "type": "RuntimeDefault" } },
                        "containers": [{
                            "name": "postgres",
                            "image": format!("{}:{}", self.image_repository, d.version),
                            "command": ["/bin/bash", "/bulkhead/start.sh"],
                            "ports": [{ "name": "postgres", "containerPort": PORT }],
                            "env": env,
                            "resources": resources,
                            "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
                            "readinessProbe": { "exec": { "command": ["pg_isready", "-U", "postgres", "-h", "127.0.0.1"] },
                                                "periodSeconds": 5 },
                            "volumeMounts": [
                                { "name": "data", "mountPath": "/var/lib/postgresql/data" },
                                { "name": "scripts", "mountPath": "/bulkhead" },
                            ],
                        }],
                        "volumes": [{ "name": "scripts", "configMap": { "name": init_config_map(ext) } }],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": { "name": "data" },
                    "spec": { "accessModes": ["ReadWriteOnce"],
                              "resources": { "requests": { "storage": format!("{}Gi", size.storage_gib) } } },
                }],
            }}),
        );
        let mut out = vec![secret, config];
        out.extend(services);
        out.push(statefulset);
        out
    }
}

/// Creates the declared databases and users when pod 0 initialises. Names
/// are validated by the CRD (`^[a-z_][a-z0-9_]*$`) and still quoted.
fn init_script(d: &DesiredDatabaseCluster) -> String {
    let mut sql = String::from(
        "#!/bin/bash\nset -euo pipefail\npsql -v ON_ERROR_STOP=1 --username postgres <<SQL\n",
    );
    sql.push_str(
        "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '${POSTGRES_PASSWORD}';\n",
    );
    for u in &d.users {
        let limit = u.connection_limit.unwrap_or(-1);
        sql.push_str(&format!(
            "CREATE ROLE \"{0}\" LOGIN CONNECTION LIMIT {1} PASSWORD '${{{2}}}';\n",
            u.name,
            limit,
            password_env(&u.name)
        ));
    }
    for db in &d.databases {
        let owner = db.owner.clone().unwrap_or_else(|| "postgres".to_string());
        sql.push_str(&format!(
            "CREATE DATABASE \"{0}\" OWNER \"{1}\";\nREVOKE ALL ON DATABASE \"{0}\" FROM PUBLIC;\n",
            db.name, owner
        ));
    }
    for u in &d.users {
        for db in &u.databases {
            sql.push_str(&format!(
                "GRANT CONNECT ON DATABASE \"{db}\" TO \"{}\";\n",
                u.name
            ));
            let owner = d
                .databases
                .iter()
                .find(|x| &x.name == db)
                .and_then(|x| x.owner.clone())
                .unwrap_or_else(|| "postgres".into());
            let grants = match u.privileges {
                Privileges::ReadOnly => "SELECT",
                Privileges::ReadWrite => "SELECT, INSERT, UPDATE, DELETE",
                Privileges::Owner => {
                    if owner != u.name {
                        sql.push_str(&format!("GRANT \"{owner}\" TO \"{}\";\n", u.name));
                    }
                    continue;
                }
            };
            sql.push_str(&format!(
                "\\\\connect \"{db}\"\nGRANT USAGE ON SCHEMA public TO \"{u}\";\nGRANT {grants} ON ALL TABLES IN SCHEMA public TO \"{u}\";\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA public GRANT {grants} ON TABLES TO \"{u}\";\n",
                u = u.name
            ));
        }
    }
    sql.push_str("SQL\n");
    sql
}

/// Pod 0 runs the image's entrypoint (which runs init.sh once); other pods
/// clone pod 0 with pg_basebackup and follow it as hot standbys.
fn start_script(ext: &str) -> String {
    format!(
        r#"#!/bin/bash
set -euo pipefail
ordinal="${{HOSTNAME##*-}}"
if [ "$ordinal" = "0" ]; then
  mkdir -p /docker-entrypoint-initdb.d 2>/dev/null || true
  cp /bulkhead/init.sh /docker-entrypoint-initdb.d/10-bulkhead.sh 2>/dev/null || true
  exec docker-entrypoint.sh postgres -c wal_level=replica -c max_wal_senders=10 -c hot_standby=on
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h {ext}-0.{hl} -U postgres; do sleep 2; done
  PGPASSWORD="$POSTGRES_PASSWORD" pg_basebackup -h {ext}-0.{hl} -U replicator -D "$PGDATA" -R -X stream
fi
exec postgres -c hot_standby=on
"#,
        ext = ext,
        hl = headless_service(ext)
    )
}

#[async_trait]
impl ExternalClient for KubernetesDatabaseClusters {
    type Desired = DesiredDatabaseCluster;
    type Observed = ObservedDatabaseCluster;

    async fn observe(
        &self,
        d: &DesiredDatabaseCluster,
    ) -> Result<Observation<ObservedDatabaseCluster>, ProviderError> {
        let desired = self.desired_children(d, true);
        let drift = self.children.drift(&desired, &KINDS, &d.owner).await?;
        if drift.existing == 0 {
            return Ok(Observation::Missing);
        }
        let sts = self
            .children
            .get(STATEFUL_SET, Some(&d.namespace), &d.external_name)
            .await?;
        let ready = sts
            .as_ref()
            .and_then(|s| s.pointer("/status/readyReplicas"))
            .and_then(Value::as_i64)
            .unwrap_or(0) as i32;
        let observed = ObservedDatabaseCluster {
            endpoint: Some(Endpoint {
                host: format!("{}.{}.svc.cluster.local", d.external_name, d.namespace),
                port: PORT,
            }),
            replicas_desired: d.size.replicas,
            replicas_ready: ready,
            version: Some(d.version.clone()),
        };
        let readiness = if sts.is_none() {
            Readiness::not_ready(reasons::CREATING, "StatefulSet not created yet")
        } else if ready >= d.size.replicas {
            Readiness::ready(format!("{ready}/{} replicas ready", d.size.replicas))
        } else {
            Readiness::not_ready(
                crate::api::database_cluster::reasons::REPLICAS_NOT_READY,
                format!("{ready}/{} replicas ready", d.size.replicas),
            )
        };
        Ok(Observation::Exists {
            up_to_date: drift.is_clean(),
            drift: drift.describe(),
            readiness,
            observed,
        })
    }

    async fn create(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        self.children
            .apply(&self.desired_children(d, true), &KINDS, &d.owner)
            .await
    }

    async fn update(
        &self,
        d: &DesiredDatabaseCluster,
        _observed: &ObservedDatabaseCluster,
    ) -> Result<(), ProviderError> {
        self.create(d).await
    }

    async fn delete(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        self.children.delete_owned(&KINDS, &d.owner).await
    }

    /// Detaches the children so garbage collection leaves them.
    async fn orphan(&self, d: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        self.children
            .reapply_existing(&self.desired_children(d, false))
            .await
    }
}

#[async_trait]
impl DatabaseClusterClient for KubernetesDatabaseClusters {
    /// The cluster runs its own PostgreSQL, superuser included.
    fn has_own_superuser(&self) -> bool {
        true
    }
}
