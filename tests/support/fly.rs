//! The Fly emulator (started in this process on 127.0.0.1, checked against
//! Fly's published schema) and one `bulkhead run` pointed at it, shared by
//! the Fly test binaries, with the helpers that read what the emulator
//! recorded.

use std::sync::OnceLock;
use std::time::Duration;

use bulkhead::api::Organization;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::controlplane::{ControlPlane, Operator};
use super::objects::{Build, WAIT, organization};

/// The emulator's admin token, the one the credentials Secret holds.
pub const ADMIN_TOKEN: &str = "emulator-admin-token-for-tests";
/// Where the operator reads Fly credentials from.
pub const CREDENTIALS_NS: &str = "bulkhead-system";
/// The credentials Secret holding [`ADMIN_TOKEN`].
pub const CREDENTIALS: &str = "fly-credentials";

static EMULATOR: OnceLock<String> = OnceLock::new();
static OPERATOR: OnceLock<Operator> = OnceLock::new();
/// Faults apply to every call the emulator gets, so a fault test runs
/// alone (write) and the others beside each other (read).
pub static FAULTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The emulator's base URL. It runs on a runtime of its own thread, so it
/// outlives each test's runtime.
pub fn emulator() -> &'static str {
    EMULATOR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("emulator runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0");
                let config = fly_emulator::Config {
                    admin_token: ADMIN_TOKEN.into(),
                    admin_email: "operator@bulkhead.test".into(),
                    ..fly_emulator::Config::default()
                };
                let server = fly_emulator::serve(config, listener)
                    .await
                    .expect("emulator starts");
                tx.send(server.url()).expect("hand over the URL");
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("emulator URL")
    })
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// A call to the emulator's control API (`/_emulator/...`), which must
/// succeed.
pub async fn control(method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req = http().request(method, format!("{}{path}", emulator()));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("control API");
    let status = resp.status();
    let value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {value}");
    value
}

/// Everything the emulator holds.
pub async fn state() -> Value {
    control(reqwest::Method::GET, "/_emulator/state", None).await
}

/// The emulator's request counters.
pub async fn counters() -> Value {
    control(reqwest::Method::GET, "/_emulator/counters", None).await
}

/// Faults on every call whose path starts with `path_prefix`: a share of
/// 503s and of 429s (Retry-After 1 s), and 50 ms added to every answer.
pub async fn inject_faults(path_prefix: &str, error_fraction: f64, rate_limit_fraction: f64) {
    control(
        reqwest::Method::PUT,
        "/_emulator/faults",
        Some(json!({ "rules": [{
            "path_prefix": path_prefix,
            "error_fraction": error_fraction, "error_status": 503,
            "rate_limit_fraction": rate_limit_fraction, "retry_after_secs": 1,
            "latency_ms": 50,
        }] })),
    )
    .await;
}

pub async fn clear_faults() {
    control(reqwest::Method::DELETE, "/_emulator/faults", None).await;
}

/// Polls `check`, under the faults [`inject_faults`] put in place after
/// `before` was read from [`counters`], for up to two minutes; then clears
/// the faults. Panics (with the emulator's counters) unless `check` held
/// and at least one 5xx was injected since `before`; returns the counters,
/// for what the caller asserts of them.
pub async fn converged_under_faults<F, Fut>(before: &Value, what: &str, check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let converged = tokio::time::timeout(Duration::from_secs(120), poll(what, check)).await;
    let counters = counters().await;
    clear_faults().await;
    assert!(
        converged.is_ok(),
        "{what}: did not converge under faults; counters: {counters}"
    );
    let injected = |c: &Value| c["faults_injected"]["error"].as_u64().unwrap_or(0);
    assert!(
        injected(&counters) > injected(before),
        "no 5xx was injected: {counters}"
    );
    counters
}

/// Creates organization `name` at Fly as someone else would (with the
/// admin token, not through bulkhead); returns Fly's `{id slug}`.
pub async fn create_org_at_fly(name: &str) -> Value {
    let resp: Value = http()
        .post(format!("{}/graphql", emulator()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .json(&json!({
            "query": "mutation($n: String!) { createOrganization(input: {name: $n}) { organization { id slug } } }",
            "variables": { "n": name },
        }))
        .send()
        .await
        .expect("create at Fly")
        .json()
        .await
        .expect("JSON");
    resp["data"]["createOrganization"]["organization"].clone()
}

/// Waits until `check` holds.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll(what, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
}

/// Polls `check` until it returns something.
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The control plane, the namespaces named (the credentials one always),
/// the credentials Secret and one operator pointed at the emulator (both
/// its GraphQL and its Machines API), shared by the binary's tests.
pub async fn setup(namespaces: &[&str]) -> (&'static ControlPlane, Client) {
    let cp = ControlPlane::apiserver();
    let client = cp.client().await;
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in std::iter::once(&CREDENTIALS_NS).chain(namespaces) {
        let _ = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("namespace"),
            )
            .await;
    }
    put_credentials(&client, CREDENTIALS, ADMIN_TOKEN).await;
    let graphql = format!("{}/graphql", emulator());
    OPERATOR.get_or_init(|| {
        cp.start_operator_env(
            cp.kubeconfig(),
            &[
                "--http-addr",
                "127.0.0.1:0",
                "--leader-election=false",
                "--resync-seconds",
                "3",
                "--fly-api-url",
                &graphql,
                "--fly-machines-url",
                emulator(),
                "--fly-timeout-seconds",
                "5",
            ],
            &[
                ("NO_PROXY", Some("127.0.0.1")),
                ("no_proxy", Some("127.0.0.1")),
            ],
        )
    });
    (cp, client)
}

/// Writes Fly token `token` into credentials Secret `name`.
pub async fn put_credentials(client: &Client, name: &str, token: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), CREDENTIALS_NS);
    api.patch(
        name,
        &PatchParams::apply("fly-test").force(),
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name },
            "stringData": { "token": token },
        })),
    )
    .await
    .expect("credentials Secret");
}

/// The `provider` of a Fly Organization (or an Environment's
/// `databaseProvider`) whose token is in credentials Secret `credentials`.
pub fn provider(credentials: &str) -> Value {
    json!({
        "type": "fly",
        "credentialsSecretRef": { "name": credentials, "key": "token" },
    })
}

/// An Organization at Fly named (and slugged) `name`.
pub fn fly_org(name: &str, credentials: &str) -> Build<Organization> {
    organization(name)
        .slug(name)
        .spec("provider", provider(credentials))
}

/// No secret (nor the admin token) in the operator's log or in any Event.
pub async fn assert_no_secret_leaked(client: &Client, secrets: &[String]) {
    let log = OPERATOR.get().map(Operator::log).unwrap_or_default();
    let events: Api<Event> = Api::all(client.clone());
    let events = serde_json::to_string(
        &events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items,
    )
    .unwrap_or_default();
    // A multi-line secret (an SSH key) is looked for line by line, as a
    // log or Event would escape its line breaks.
    let pieces = secrets
        .iter()
        .map(String::as_str)
        .chain([ADMIN_TOKEN])
        .flat_map(|s| s.trim_start_matches("FlyV1 ").lines())
        .filter(|l| !l.is_empty() && !l.starts_with("-----"));
    for core in pieces {
        assert!(!log.contains(core), "a secret is in the operator's log");
        assert!(!events.contains(core), "a secret is in an Event");
    }
}
