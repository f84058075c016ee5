//! One controller per kind. Each reconcile is a short pipeline —
//! dereference parents → validate → build the desired state → converge via
//! `reconcile::managed` → write status — and each shares this [`Context`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::api::{ProviderSpec, ProviderType};
use crate::provider::kubernetes::{Children, KubernetesDatabaseClusters};
use crate::provider::{DatabaseClusterClient, Owner};
use crate::reconcile::managed::{Backoff, FailPoint, Managed};
use crate::reconcile::{ReconcileError, reasons};

pub mod database_cluster;
pub mod environment;
pub mod organization;
pub mod roles;

/// Operator settings that shape reconciles.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often every object is looked at again, to find and fix drift.
    pub resync: Duration,
    /// Image repository for in-cluster PostgreSQL (tag = spec.version).
    pub postgres_image: String,
    /// Crash on purpose at a point of the create path (tests only).
    pub fail_point: Option<FailPoint>,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(300),
            postgres_image: "postgres".to_string(),
            fail_point: None,
            concurrency: 4,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub backoff: Backoff,
    pub children: Children,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How many controllers have a synced cache.
    synced: tokio::sync::watch::Sender<usize>,
}

/// Controllers that report their cache sync.
const CONTROLLERS: usize = 3;

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "bulkhead".into(),
            instance: std::env::var("POD_NAME")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok()),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            children: Children::new(client.clone()),
            client,
            settings,
            backoff: Backoff::default(),
            metrics,
            synced: tokio::sync::watch::channel(0).0,
        })
    }

    /// Counts a controller's cache as synced once its store is ready.
    pub fn track_sync<K>(&self, store: reflector::Store<K>)
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let synced = self.synced.clone();
        tokio::spawn(async move {
            // The store's readiness is a oneshot that wakes only its most
            // recent waiter (the controller's own), so poll it again on a
            // short tick instead of waiting once.
            loop {
                match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => {
                        synced.send_modify(|n| *n += 1);
                        tracing::debug!(kind = %K::kind(&()), "cache synced");
                        return;
                    }
                    Ok(Err(e)) => {
                        warn!(kind = %K::kind(&()), error = %e, "cache never synced");
                        return;
                    }
                    Err(_) => continue,
                }
            }
        });
    }

    /// Resolves once every controller's cache has synced.
    pub async fn caches_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|n| *n >= CONTROLLERS).await;
    }

    pub fn managed(&self) -> Managed<'_> {
        Managed {
            recorder: &self.recorder,
            fail_point: self.settings.fail_point,
        }
    }

    /// Reads one key of a Secret holding provider credentials.
    pub async fn read_credentials(&self, spec: &ProviderSpec) -> Result<String, ReconcileError> {
        let Some(r) = &spec.credentials_secret_ref else {
            return Err(ReconcileError::invalid(
                reasons::CREDENTIALS_UNAVAILABLE,
                format!("provider {} needs credentialsSecretRef", spec.type_),
            ));
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &r.namespace);
        let secret = api.get_opt(&r.name).await?.ok_or_else(|| {
            ReconcileError::waiting(
                reasons::CREDENTIALS_UNAVAILABLE,
                format!("Secret {}/{} not found", r.namespace, r.name),
            )
        })?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .cloned()
            })
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                ReconcileError::waiting(
                    reasons::CREDENTIALS_UNAVAILABLE,
                    format!("Secret {}/{} has no key {:?}", r.namespace, r.name, r.key),
                )
            })?;
        Ok(value)
    }

    /// The DatabaseCluster backend for a provider spec.
    pub async fn database_clusters(
        &self,
        spec: &ProviderSpec,
    ) -> Result<Arc<dyn DatabaseClusterClient>, ReconcileError> {
        match spec.type_ {
            ProviderType::Kubernetes => Ok(Arc::new(KubernetesDatabaseClusters::new(
                self.children.clone(),
                self.settings.postgres_image.clone(),
            ))),
            ProviderType::Postgres => {
                let dsn = self.read_credentials(spec).await?;
                let client =
                    crate::provider::postgres::PostgresDatabaseClusters::from_connection_string(
                        &dsn,
                    )?;
                Ok(Arc::new(client))
            }
            ProviderType::Fly => Err(ReconcileError::invalid(
                reasons::UNSUPPORTED,
                "the fly provider does not manage DatabaseClusters in this release; use kubernetes or postgres",
            )),
        }
    }
}

/// After a failed reconcile: count it, and requeue with the object's backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> kube::runtime::controller::Action {
    ctx.metrics.reconcile_error(&K::kind(&()), error);
    crate::reconcile::managed::error_action(&ctx.backoff, &obj.uid().unwrap_or_default(), error)
}

/// Identity of a bulkhead object, for owner references of its children.
pub fn owner_of<K: Resource<DynamicType = ()>>(obj: &K) -> Owner {
    Owner {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        namespace: obj.namespace(),
    }
}

/// Hash of what should wake a controller for its own kind: spec changes
/// (generation), annotations (pause, external name), finalizers and the
/// start of deletion. Status writes change none of these, so a status
/// write never triggers another reconcile.
pub fn reconcile_trigger<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.finalizers.hash(&mut h);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    meta.labels.hash(&mut h);
    Some(h.finish())
}

/// The main watch stream of a controller: a reflector-backed watcher
/// filtered by [`reconcile_trigger`].
pub fn trigger_stream<K>(
    api: Api<K>,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .predicate_filter(reconcile_trigger, Default::default());
    (reader, stream)
}

/// Watch config for children bulkhead manages.
pub fn managed_children() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        crate::api::LABEL_MANAGED_BY,
        crate::api::MANAGER
    ))
}

/// Runs every controller until `shutdown` resolves; in-flight reconciles
/// finish first.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    if let Err(e) = roles::ensure_environment_roles(&ctx.client).await {
        warn!(error = %e, "could not apply the bulkhead-environment-* ClusterRoles; install them with the Helm chart");
    }
    info!("starting controllers");
    let orgs = organization::controller(ctx.clone(), shutdown.clone());
    let envs = environment::controller(ctx.clone(), shutdown.clone());
    let dbcs = database_cluster::controller(ctx.clone(), shutdown.clone());
    futures::join!(orgs.count(), envs.count(), dbcs.count());
    info!("controllers stopped");
}
