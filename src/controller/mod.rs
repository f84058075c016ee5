//! One controller per kind. Each reconcile is a short pipeline —
//! dereference parents → validate → build the desired state → converge via
//! `reconcile::managed` → write status — and each shares this [`Context`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::api::common::FlyPostgres;
use crate::api::{Environment, Organization, ProviderSpec, ProviderType};
use crate::provider::cloudnativepg::CloudNativePgDatabaseClusters;
use crate::provider::kubernetes::children::{self, ChildKind};
use crate::provider::kubernetes::{Children, KubernetesEnvironments, KubernetesOrganizations};
use crate::provider::{DatabaseClusterClient, OrganizationClient, Owner, Secret};
use crate::reasons;
use crate::reconcile::ReconcileError;
use crate::reconcile::managed::{Backoff, FailPoint, Managed};

pub mod database_cluster;
pub mod environment;
pub mod organization;
pub mod roles;

/// Operator settings that shape reconciles.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often every object is looked at again, to find and fix drift.
    pub resync: Duration,
    /// Image repository of CloudNativePG's PostgreSQL operand images for
    /// in-cluster DatabaseClusters (tag = spec.version).
    pub postgres_image: String,
    /// Crash on purpose at a point of the create path (tests only).
    pub fail_point: Option<FailPoint>,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
    /// The operator's own namespace: never given to an Environment.
    pub operator_namespace: String,
    /// The only namespace provider credentials are read from.
    pub credentials_namespace: String,
    /// Namespaces no Environment may claim, besides `default`, `kube-*`,
    /// the operator's and the credentials namespace.
    pub denied_namespaces: Vec<String>,
    /// ClusterRole the operator binds to itself in each environment
    /// namespace (its Secrets and workloads there); empty: none.
    pub namespace_role: String,
    /// The operator's own RBAC subject (from a SelfSubjectReview at start).
    pub operator_subject: Option<serde_json::Value>,
    /// Where Fly's APIs are and how hard to use them.
    pub fly: crate::provider::fly::FlySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(300),
            postgres_image: DEFAULT_POSTGRES_IMAGE.to_string(),
            fail_point: None,
            concurrency: 4,
            operator_namespace: "bulkhead-system".to_string(),
            credentials_namespace: "bulkhead-system".to_string(),
            denied_namespaces: Vec::new(),
            namespace_role: DEFAULT_NAMESPACE_ROLE.to_string(),
            operator_subject: None,
            fly: crate::provider::fly::FlySettings::default(),
        }
    }
}

/// CloudNativePG's PostgreSQL images, tagged by major version (`:16`).
pub const DEFAULT_POSTGRES_IMAGE: &str = "ghcr.io/cloudnative-pg/postgresql";

/// The ClusterRole the chart ships for the operator's rights inside
/// environment namespaces.
pub const DEFAULT_NAMESPACE_ROLE: &str = "bulkhead-operator-namespace";

impl Settings {
    /// Why an Environment may not claim `namespace`, if it may not.
    pub fn forbidden_namespace(&self, namespace: &str) -> Option<String> {
        if namespace == "default" || namespace.starts_with("kube-") {
            Some(format!("{namespace} is a Kubernetes system namespace"))
        } else if namespace == self.operator_namespace {
            Some(format!("{namespace} is the operator's own namespace"))
        } else if namespace == self.credentials_namespace {
            Some(format!(
                "{namespace} holds the provider credentials bulkhead uses"
            ))
        } else if self.denied_namespaces.iter().any(|d| d == namespace) {
            Some(format!(
                "{namespace} is in the operator's deny-list (--denied-namespaces)"
            ))
        } else {
            None
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// For requests (with a read timeout).
    pub client: Client,
    /// For the controllers' watches (long reads, no read timeout).
    pub watch_client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub backoff: Backoff,
    pub children: Children,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Every Environment and Organization, from the controllers' own
    /// watches (set when each controller starts), so reconciles that look
    /// at peers never LIST.
    pub environments: OnceLock<reflector::Store<Environment>>,
    pub organizations: OnceLock<reflector::Store<Organization>>,
    /// The newest generation of each Environment that a DatabaseCluster
    /// trigger has seen. That trigger and the Environment cache are two
    /// watches, so a reconcile woken by a spec change can find the cache
    /// one event behind; a cached copy older than this is read from the
    /// apiserver instead (else a stale copy could leave a terminal
    /// condition standing for its whole requeue interval).
    environment_generations: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// The one Fly API client (one rate limiter for every reconcile), or
    /// why it could not be built.
    fly: Result<Arc<crate::provider::fly::FlyApi>, String>,
    /// How many controllers have a synced cache.
    synced: tokio::sync::watch::Sender<usize>,
}

/// Controllers that report their cache sync.
const CONTROLLERS: usize = 3;

impl Context {
    pub fn new(
        client: Client,
        watch_client: Client,
        settings: Settings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "bulkhead".into(),
            instance: std::env::var("POD_NAME")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok()),
        };
        let fly = crate::provider::fly::FlyApi::new(settings.fly.clone());
        Arc::new(Context {
            fly,
            recorder: Recorder::new(client.clone(), reporter),
            children: Children::new(client.clone()),
            client,
            watch_client,
            settings,
            backoff: Backoff::default(),
            metrics,
            environments: OnceLock::new(),
            organizations: OnceLock::new(),
            environment_generations: Default::default(),
            synced: tokio::sync::watch::channel(0).0,
        })
    }

    /// Counts a controller's cache as synced once its store is ready.
    pub fn track_sync<K>(&self, store: reflector::Store<K>)
    where
        K: Resource<DynamicType = ()> + serde::Serialize + Clone + Send + Sync + 'static,
    {
        // The same cache feeds bulkhead_objects (objects by condition).
        self.metrics.count_conditions(store.clone());
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

    /// Every Environment, from the Environment controller's cache (a LIST
    /// only before that controller has started).
    pub async fn all_environments(&self) -> Result<Vec<Arc<Environment>>, ReconcileError> {
        cached_or_listed(self.environments.get(), &self.client).await
    }

    /// One Environment: from the Environment controller's cache when it
    /// holds it, from the apiserver when not (not synced yet, or just made).
    pub async fn environment(
        &self,
        name: &str,
    ) -> Result<Option<Arc<Environment>>, ReconcileError> {
        let seen = self
            .environment_generations
            .lock()
            .ok()
            .and_then(|m| m.get(name).copied());
        let store = self.environments.get();
        let cached = store.and_then(|s| s.get(&reflector::ObjectRef::new(name)));
        match (cached, seen) {
            (Some(env), Some(seen)) if env.metadata.generation.unwrap_or(0) < seen => {
                Ok(Api::<Environment>::all(self.client.clone())
                    .get_opt(name)
                    .await?
                    .map(Arc::new))
            }
            _ => cached_or_read(store, &self.client, name).await,
        }
    }

    /// Records the generation of an Environment a trigger saw (see
    /// `environment_generations`); forgotten when it is deleted.
    pub fn saw_environment(&self, env: &Environment) {
        if let (Ok(mut seen), Some(generation)) =
            (self.environment_generations.lock(), env.metadata.generation)
        {
            let name = env.name_any();
            if env.metadata.deletion_timestamp.is_some() {
                seen.remove(&name);
            } else {
                let at = seen.entry(name).or_insert(generation);
                *at = (*at).max(generation);
            }
        }
    }

    /// One Organization, the same way as [`Context::environment`].
    pub async fn organization(
        &self,
        name: &str,
    ) -> Result<Option<Arc<Organization>>, ReconcileError> {
        cached_or_read(self.organizations.get(), &self.client, name).await
    }

    /// Every Organization, from the Organization controller's cache.
    pub async fn all_organizations(&self) -> Result<Vec<Arc<Organization>>, ReconcileError> {
        cached_or_listed(self.organizations.get(), &self.client).await
    }

    /// Reads one key of a provider credentials Secret. Credentials live
    /// only in the credentials namespace, are named only by cluster-scoped
    /// objects, and no message ever quotes any part of their value.
    pub async fn read_credentials(&self, spec: &ProviderSpec) -> Result<Secret, ReconcileError> {
        let Some(r) = &spec.credentials_secret_ref else {
            return Err(ReconcileError::invalid(
                reasons::CREDENTIALS_UNAVAILABLE,
                format!("provider {} needs credentialsSecretRef", spec.type_),
            ));
        };
        let ns = &self.settings.credentials_namespace;
        let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), ns);
        let secret = api.get_opt(&r.name).await?.ok_or_else(|| {
            ReconcileError::waiting(
                reasons::CREDENTIALS_UNAVAILABLE,
                format!("Secret {ns}/{} not found", r.name),
            )
        })?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                ReconcileError::waiting(
                    reasons::CREDENTIALS_UNAVAILABLE,
                    format!("Secret {ns}/{} has no key {:?}", r.name, r.key),
                )
            })?;
        Ok(Secret::new(value))
    }

    /// Names a credentials key in messages: `Secret ns/name key k`.
    pub fn describe_credentials(&self, spec: &ProviderSpec) -> String {
        match &spec.credentials_secret_ref {
            Some(r) => format!(
                "Secret {}/{} key {}",
                self.settings.credentials_namespace, r.name, r.key
            ),
            None => "no credentials Secret".to_string(),
        }
    }

    /// A PostgreSQL client from a provider spec's admin connection string;
    /// a malformed one is reported by Secret and key, never by value.
    pub async fn postgres_client(
        &self,
        spec: &ProviderSpec,
    ) -> Result<crate::provider::postgres::PostgresDatabaseClusters, ReconcileError> {
        let dsn = self.read_credentials(spec).await?;
        crate::provider::postgres::PostgresDatabaseClusters::from_connection_string(dsn.expose())
            .map_err(|e| {
                ReconcileError::invalid(
                    reasons::CREDENTIALS_UNAVAILABLE,
                    format!("{}: {e}", self.describe_credentials(spec)),
                )
            })
    }

    /// The Organization backend for a provider spec: one match arm per
    /// provider, the only place controllers learn which one it is.
    pub async fn organizations(
        &self,
        spec: &ProviderSpec,
    ) -> Result<Arc<dyn OrganizationClient>, ReconcileError> {
        match spec.type_ {
            ProviderType::Kubernetes => Ok(Arc::new(KubernetesOrganizations::new(
                self.children.clone(),
            ))),
            ProviderType::Fly => {
                let fly = self.fly_connection(spec).await?;
                Ok(Arc::new(crate::provider::fly::FlyOrganizations::new(
                    fly,
                    self.children.clone(),
                )))
            }
            ProviderType::Postgres => Err(ReconcileError::invalid(
                reasons::INVALID_SPEC,
                "provider type postgres holds DatabaseClusters only; an Organization needs kubernetes or fly",
            )),
        }
    }

    /// The process's Fly API client, the token a provider spec names (only
    /// from the operator's credentials namespace: Trust model) and where
    /// it came from, for messages.
    async fn fly_connection(
        &self,
        spec: &ProviderSpec,
    ) -> Result<crate::provider::fly::FlySession, ReconcileError> {
        let api = self.fly.clone().map_err(|e| {
            ReconcileError::Provider(crate::provider::ProviderError::unavailable(e))
        })?;
        let token = self.read_credentials(spec).await?;
        Ok(crate::provider::fly::FlySession::new(
            api,
            token,
            self.describe_credentials(spec),
        ))
    }

    /// The Environment backend: Environments are always realised in the
    /// cluster, whatever the Organization's provider.
    pub fn environments_client(&self) -> KubernetesEnvironments {
        KubernetesEnvironments::new(self.children.clone())
    }

    /// The DatabaseCluster backend for a provider spec.
    pub async fn database_clusters(
        &self,
        spec: &ProviderSpec,
    ) -> Result<Arc<dyn DatabaseClusterClient>, ReconcileError> {
        match spec.type_ {
            ProviderType::Kubernetes => Ok(Arc::new(CloudNativePgDatabaseClusters::new(
                self.children.clone(),
                self.settings.postgres_image.clone(),
            ))),
            ProviderType::Postgres => Ok(Arc::new(self.postgres_client(spec).await?)),
            ProviderType::Fly => {
                let fly = self.fly_connection(spec).await?;
                Ok(
                    match spec.fly.as_ref().map(|f| f.postgres).unwrap_or_default() {
                        FlyPostgres::Managed => {
                            Arc::new(crate::provider::fly::FlyManagedPostgres::new(fly))
                        }
                        FlyPostgres::Flex => {
                            Arc::new(crate::provider::fly::FlyFlexPostgres::new(fly))
                        }
                    },
                )
            }
        }
    }
}

/// What a kind needs for bulkhead to watch and cache it: a typed resource
/// that can be read, debugged and shared between tasks.
pub trait WatchedKind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> WatchedKind for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// One object of a cluster-scoped kind: the store's copy, else a GET.
async fn cached_or_read<K>(
    store: Option<&reflector::Store<K>>,
    client: &Client,
    name: &str,
) -> Result<Option<Arc<K>>, ReconcileError>
where
    K: WatchedKind,
{
    if let Some(found) = store.and_then(|s| s.get(&reflector::ObjectRef::new(name))) {
        return Ok(Some(found));
    }
    Ok(Api::<K>::all(client.clone())
        .get_opt(name)
        .await?
        .map(Arc::new))
}

/// Every object of a cluster-scoped kind: the store's when there is one.
async fn cached_or_listed<K>(
    store: Option<&reflector::Store<K>>,
    client: &Client,
) -> Result<Vec<Arc<K>>, ReconcileError>
where
    K: WatchedKind,
{
    match store {
        Some(store) => Ok(store.state()),
        None => Ok(Api::<K>::all(client.clone())
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect()),
    }
}

/// How every controller ends its builder: `--concurrency` reconciles at
/// once, a graceful shutdown (in-flight reconciles finish), the kind's
/// `reconcile` and the shared [`error_policy`].
pub fn run_controller<K, Fut>(
    controller: Controller<K>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    reconcile: impl FnMut(Arc<K>, Arc<Context>) -> Fut,
) -> impl Stream<Item = ()>
where
    K: WatchedKind,
    Fut: std::future::Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    let concurrency = ctx.settings.concurrency;
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy::<K>, ctx)
        .map(|_| ())
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
    let meta = obj.meta();
    related_trigger(obj, (&meta.annotations, &meta.labels))
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
    K: WatchedKind,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        // managedFields (an entry per writer, with every field it set) is
        // most of a stored object and nothing here reads it.
        .modify(|obj| {
            obj.managed_fields_mut().clear();
            obj.annotations_mut()
                .remove("kubectl.kubernetes.io/last-applied-configuration");
        })
        .reflect(writer)
        .touched_objects()
        .predicate_filter(reconcile_trigger, Default::default());
    (reader, stream)
}

/// Hash of what another kind's controller cares about in `obj`: its spec
/// (generation), the start of its deletion, its finalizers (their removal is
/// the last update before it is gone) and `extra` (e.g. whether it is
/// Ready). Status writes that change none of these wake nobody.
pub fn related_trigger<K: Resource>(obj: &K, extra: impl std::hash::Hash) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    meta.finalizers.hash(&mut h);
    extra.hash(&mut h);
    Some(h.finish())
}

/// A watch of a related kind, filtered by `trigger`, for
/// `Controller::watches_stream`.
pub fn related_stream<K, P>(
    api: Api<K>,
    trigger: P,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: WatchedKind,
    P: kube::runtime::Predicate<K> + Send + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .touched_objects()
        .predicate_filter(trigger, Default::default())
}

/// Whether a bulkhead object reports Ready=True (for triggers).
pub fn is_ready(
    conditions: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> bool {
    conditions.is_some_and(|c| crate::api::is_condition_true(c, crate::api::CONDITION_READY))
}

/// Every child kind bulkhead reads from a watch instead of the apiserver:
/// those the operator may list and watch cluster-wide (see the chart's
/// RBAC). Secrets, Services and ServiceAccounts are not among them: the
/// operator has no cluster-wide right to read them, so those are read in
/// their namespace when needed.
pub const CACHED_CHILD_KINDS: [ChildKind; 9] = [
    children::NAMESPACE,
    children::ROLE_BINDING,
    children::NETWORK_POLICY,
    children::CONFIG_MAP,
    children::RESOURCE_QUOTA,
    children::CLUSTER_ROLE,
    children::CLUSTER_ROLE_BINDING,
    crate::provider::cloudnativepg::CLUSTER,
    crate::provider::cloudnativepg::DATABASE,
];

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
    // Children are read from watches from here on; each controller
    // subscribes to changes of the children its objects own.
    ctx.children
        .start_cache(&ctx.watch_client, &CACHED_CHILD_KINDS);
    let children = ctx.children.clone();
    ctx.metrics
        .count_cached_children(move || children.cached_objects());
    info!("starting controllers");
    let orgs = organization::controller(ctx.clone(), shutdown.clone());
    let envs = environment::controller(ctx.clone(), shutdown.clone());
    let dbcs = database_cluster::controller(ctx.clone(), shutdown.clone());
    futures::join!(orgs.count(), envs.count(), dbcs.count());
    info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_never_get_system_operator_or_denied_namespaces() {
        let settings = Settings {
            operator_namespace: "bulkhead-system".into(),
            credentials_namespace: "bulkhead-credentials".into(),
            denied_namespaces: vec!["payments".into()],
            ..Settings::default()
        };
        for ns in [
            "default",
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "bulkhead-system",
            "bulkhead-credentials",
            "payments",
        ] {
            assert!(settings.forbidden_namespace(ns).is_some(), "{ns} allowed");
        }
        for ns in ["staging", "kubeflow", "payments-dev", "defaults"] {
            assert_eq!(settings.forbidden_namespace(ns), None, "{ns} refused");
        }
    }
}
