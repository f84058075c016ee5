//! `bulkhead run`: connect to the cluster, check the CRDs, serve health and
//! metrics, win the leader lease, run the controllers, and shut down cleanly
//! on SIGTERM (in-flight reconciles finish, the lease is released).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::controller::{self, Context, Settings};
use crate::metrics::Metrics;
use crate::reconcile::managed::FailPoint;
use crate::telemetry::{self, LogFormat};
use crate::{Error, Result};

/// Flags of `bulkhead run`; each also reads an environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Log level directive (e.g. info, debug, bulkhead=debug,kube=warn).
    #[arg(long, env = "BULKHEAD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: text for people, json for log pipelines.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "BULKHEAD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Elect a leader through a Lease so several replicas can run and
    /// exactly one reconciles.
    #[arg(long, env = "BULKHEAD_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "bulkhead-system")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "BULKHEAD_LEASE_NAME", default_value = "bulkhead-leader")]
    pub lease_name: String,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "BULKHEAD_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// This replica's identity in the Lease (defaults to the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds between full resyncs, which find and correct drift.
    #[arg(long, env = "BULKHEAD_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// Image repository of the PostgreSQL images CloudNativePG runs for
    /// in-cluster DatabaseClusters; the tag is spec.version.
    #[arg(long, env = "BULKHEAD_POSTGRES_IMAGE", default_value = crate::controller::DEFAULT_POSTGRES_IMAGE)]
    pub postgres_image: String,
    /// Reconciles running at once per kind.
    #[arg(long, env = "BULKHEAD_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// The only namespace provider credentials Secrets are read from
    /// (defaults to the operator's namespace, --lease-namespace).
    #[arg(long, env = "BULKHEAD_CREDENTIALS_NAMESPACE")]
    pub credentials_namespace: Option<String>,
    /// Namespaces no Environment may claim, comma-separated, besides
    /// default, kube-*, the operator's and the credentials namespace.
    #[arg(long, env = "BULKHEAD_DENIED_NAMESPACES", value_delimiter = ',')]
    pub denied_namespaces: Vec<String>,
    /// ClusterRole the operator binds to itself in every environment
    /// namespace (the chart's bulkhead-operator-namespace); "" for none
    /// (an operator with cluster-wide rights).
    #[arg(long, env = "BULKHEAD_NAMESPACE_ROLE", default_value = crate::controller::DEFAULT_NAMESPACE_ROLE)]
    pub namespace_role: String,
    /// Fly.io's GraphQL API (organizations, members, tokens).
    #[arg(long, env = "BULKHEAD_FLY_API_URL", default_value = crate::provider::fly::DEFAULT_GRAPHQL_URL)]
    pub fly_api_url: String,
    /// Fly.io's Machines REST API.
    #[arg(long, env = "BULKHEAD_FLY_MACHINES_URL", default_value = crate::provider::fly::DEFAULT_MACHINES_URL)]
    pub fly_machines_url: String,
    /// Requests per second bulkhead sends to Fly, all objects together
    /// (bursts up to twice that).
    #[arg(long, env = "BULKHEAD_FLY_REQUESTS_PER_SECOND", default_value_t = 10)]
    pub fly_requests_per_second: u32,
    /// Seconds to wait for one answer from Fly.
    #[arg(long, env = "BULKHEAD_FLY_TIMEOUT_SECONDS", default_value_t = 30)]
    pub fly_timeout_seconds: u64,
    /// Crash on purpose at a point of the create path (crash-safety tests).
    #[arg(long, env = "BULKHEAD_FAIL_POINT", value_enum, hide = true)]
    pub fail_point: Option<FailPoint>,
}

/// Who the operator is, as an RBAC subject, from a SelfSubjectReview (which
/// every authenticated identity may create): the subject of the RoleBinding
/// that gives it its rights in each environment namespace.
async fn own_subject(client: &Client) -> Option<serde_json::Value> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    match api
        .create(&Default::default(), &SelfSubjectReview::default())
        .await
    {
        Ok(review) => {
            let username = review.status?.user_info?.username?;
            info!(username, "operator identity");
            Some(subject_for(&username))
        }
        Err(e) => {
            warn!(error = %e, "SelfSubjectReview failed: the operator will not bind itself a role in environment namespaces");
            None
        }
    }
}

/// The RBAC subject for an authenticated user name.
pub fn subject_for(username: &str) -> serde_json::Value {
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((namespace, name)) => {
            serde_json::json!({ "kind": "ServiceAccount", "name": name, "namespace": namespace })
        }
        None => serde_json::json!({
            "kind": "User", "name": username, "apiGroup": "rbac.authorization.k8s.io",
        }),
    }
}

/// Longest wait for the answer to one non-watch API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Names of the CRDs bulkhead needs.
pub fn required_crds() -> Vec<String> {
    crate::api::crds()
        .into_iter()
        .filter_map(|(_, crd)| crd.metadata.name)
        .collect()
}

/// Fails with the list of missing CRDs when any is not installed.
pub async fn check_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for name in required_crds() {
        if api.get_opt(&name).await?.is_none() {
            missing.push(name);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::CrdsMissing {
            missing: missing.join(", "),
        })
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn serve_http(
    addr: SocketAddr,
    state: HttpState,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                if s.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(),
                )
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// This replica's name: in the Lease, and in the User-Agent of every
/// request, so the apiserver's audit log tells the replicas apart.
fn replica_identity(args: &RunArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "bulkhead".into());
        format!("{host}-{}", std::process::id())
    })
}

/// `bulkhead/<version> (<replica>)`; a replica name that is not a valid
/// header value is left out rather than failing the start.
fn user_agent(identity: &str) -> http::HeaderValue {
    let version = env!("CARGO_PKG_VERSION");
    http::HeaderValue::from_str(&format!("bulkhead/{version} ({identity})")).unwrap_or_else(|_| {
        http::HeaderValue::from_static(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
    })
}

pub async fn run(args: RunArgs) -> Result<()> {
    telemetry::init(args.log_format, &args.log_level);
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    config.headers.push((
        http::header::USER_AGENT,
        user_agent(&replica_identity(&args)),
    ));
    // Watches are long reads that the apiserver ends itself; every other
    // request gets a read timeout, so a response that never comes fails
    // the reconcile (retried with backoff) instead of holding it forever.
    let metrics = Arc::new(Metrics::default());
    // Both clients count what they send (bulkhead_apiserver_requests_total),
    // so reads and writes per object can be seen from the operator itself.
    let counted = |config: kube::Config| -> Result<Client> {
        Ok(kube::client::ClientBuilder::try_from(config)
            .map_err(|e| Error::Config(e.to_string()))?
            .with_layer(&crate::metrics::count_requests(metrics.clone()))
            .build())
    };
    let watch_client = counted(config.clone())?;
    let mut request_config = config;
    request_config.read_timeout = Some(REQUEST_TIMEOUT);
    let client = counted(request_config)?;
    check_crds(&client).await?;
    info!("bulkhead CRDs installed");

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = tokio::spawn(serve_http(
        args.http_addr,
        HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
        stop_rx.clone(),
    ));
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            termination().await;
            info!("termination signal: finishing in-flight reconciles");
            let _ = stop_tx.send(true);
        }
    });

    let settings = Settings {
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        postgres_image: args.postgres_image.clone(),
        fail_point: args.fail_point,
        concurrency: args.concurrency.max(1),
        operator_namespace: args.lease_namespace.clone(),
        credentials_namespace: args
            .credentials_namespace
            .clone()
            .unwrap_or_else(|| args.lease_namespace.clone()),
        denied_namespaces: args
            .denied_namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        namespace_role: args.namespace_role.clone(),
        operator_subject: own_subject(&client).await,
        fly: crate::provider::fly::FlySettings {
            graphql_url: args.fly_api_url.clone(),
            machines_url: args.fly_machines_url.clone(),
            request_timeout: Duration::from_secs(args.fly_timeout_seconds.max(1)),
            requests_per_second: args.fly_requests_per_second.max(1),
            ..crate::provider::fly::FlySettings::default()
        },
    };
    let ctx = Context::new(client.clone(), watch_client, settings, metrics.clone());
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let outcome = if args.leader_election {
        run_with_lease(
            &args,
            client,
            ctx,
            ready.clone(),
            metrics.clone(),
            stop_rx.clone(),
        )
        .await
    } else {
        metrics.leader.set(1);
        run_controllers(ctx, ready.clone(), stopped).await;
        Ok(())
    };
    let _ = stop_tx.send(true);
    match http.await {
        Ok(Err(e)) => warn!(error = %e, "HTTP server stopped with an error"),
        Err(e) => warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    outcome
}

/// Runs the controllers until `shutdown`, marking the process ready once
/// every controller's cache has synced.
async fn run_controllers(
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controllers = controller::run(ctx.clone(), shutdown);
    let synced = async {
        ctx.caches_synced().await;
        ready.store(true, Ordering::Release);
        info!("caches synced; ready");
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = controllers => {}
        _ = synced => {}
    }
    ready.store(false, Ordering::Release);
}

async fn run_with_lease(
    args: &RunArgs,
    client: Client,
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let identity = replica_identity(args);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration.max(2))
        .with_grace((args.lease_duration / 3).max(1))
        .with_field_manager("bulkhead-leader-election")
        .build()
        .await
        .map_err(|e| {
            Error::Config(format!(
                "leader election on Lease {}/{}: {e}",
                args.lease_namespace, args.lease_name
            ))
        })?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(identity, lease = %args.lease_name, namespace = %args.lease_namespace, "waiting for leadership");
    // A standby is healthy and ready: it serves nothing until it leads.
    ready.store(true, Ordering::Release);
    let became_leader = tokio::select! {
        r = leader.wait_for(|l| *l) => r.is_ok(),
        _ = stop.wait_for(|s| *s) => false,
    };
    let mut result = Ok(());
    if became_leader {
        info!(identity, "became leader; starting controllers");
        metrics.leader.set(1);
        ready.store(false, Ordering::Release);
        let mut stop_for_controllers = stop.clone();
        let shutdown = async move {
            let _ = stop_for_controllers.wait_for(|s| *s).await;
        };
        let guard = lease_guard(
            Api::namespaced(ctx.watch_client.clone(), &args.lease_namespace),
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_duration.max(2)),
            leader.clone(),
        );
        tokio::select! {
            // SIGTERM: in-flight reconciles finish, then the lease is released.
            _ = run_controllers(ctx, ready.clone(), shutdown) => {}
            // Lost (or no longer sure of) the lease: another replica may
            // start any moment, so nothing more is written. Dropping the
            // controllers cancels in-flight reconciles mid-request instead
            // of letting them finish.
            why = guard => {
                error!(reason = why, "lost the leader lease; stopped the controllers without waiting for in-flight reconciles");
                ready.store(false, Ordering::Release);
                result = Err(Error::Config(format!("lost the leader lease: {why}")));
            }
        }
        metrics.leader.set(0);
    }
    // Closing the channel makes the lease task release the lease.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "releasing the leader lease failed"),
        Ok(Err(e)) => warn!(error = %e, "lease task failed"),
        Err(_) => warn!("timed out releasing the leader lease"),
    }
    result
}

/// How long before the Lease expires a leader that cannot renew it stops:
/// a standby takes over only once the Lease has expired by its own clock,
/// so this margin absorbs clock skew and the time to stop.
const LEASE_STOP_MARGIN: Duration = Duration::from_secs(1);

/// Resolves when this replica can no longer be sure it holds the Lease.
///
/// The lease manager renews the Lease but, while the apiserver cannot be
/// reached, reports nothing: its leader would keep running past the
/// Lease's expiry, while a standby that can still reach the apiserver takes
/// over (client-go guards this with a renew deadline). So the leader
/// watches its own Lease, and gives up `LEASE_STOP_MARGIN` before the
/// last renewal it saw runs out, whether or not the lease manager noticed.
async fn lease_guard(
    leases: Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
    mut leader: watch::Receiver<bool>,
) -> &'static str {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    let lifetime = duration.saturating_sub(LEASE_STOP_MARGIN);
    // Just won: the Lease was renewed a moment ago.
    let mut deadline = tokio::time::Instant::now() + lifetime;
    let events = watcher(
        leases,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .applied_objects();
    futures::pin_mut!(events);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return "no renewal of the Lease seen before it would expire (is the apiserver reachable?)";
            }
            _ = leader.wait_for(|l| !*l) => return "the lease manager reports another holder",
            event = events.next() => match event {
                Some(Ok(lease)) => {
                    let spec = lease.spec.unwrap_or_default();
                    if spec.holder_identity.as_deref() != Some(identity) {
                        return "another replica holds the Lease";
                    }
                    if let Some(renewed) = spec.renew_time {
                        // The Lease runs out at renewTime + duration by the
                        // apiserver's record; stop the margin before that.
                        let left_ms = renewed.0.as_millisecond()
                            + i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX)
                            - k8s_openapi::jiff::Timestamp::now().as_millisecond();
                        let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
                        deadline = tokio::time::Instant::now() + left;
                    }
                }
                // Watch errors: the deadline decides.
                Some(Err(_)) => {}
                None => return "the Lease watch ended",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_and_users_become_rbac_subjects() {
        assert_eq!(
            subject_for("system:serviceaccount:bulkhead-system:bulkhead"),
            serde_json::json!({"kind": "ServiceAccount", "name": "bulkhead", "namespace": "bulkhead-system"})
        );
        assert_eq!(
            subject_for("admin")["kind"],
            serde_json::json!("User"),
            "a client certificate's user"
        );
    }
}
