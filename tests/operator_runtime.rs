//! `bulkhead run` as a process on a real control plane: leader election
//! through a Lease (one leader reconciles, a standby takes over when the
//! leader stops), graceful shutdown on SIGTERM, and the HTTP endpoints a
//! platform runs it with — `/metrics`, `/healthz`, `/readyz`.
//!
//! Every operator watches the whole cluster, so the scenarios here take
//! turns (see [`exclusive`]): a process counts only the reconciles of
//! operators its test started.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead::api::{Environment, Organization};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::controlplane::{
    ControlPlane, delete_and_wait, delete_and_wait_recreated, unique, wait_for,
};
use support::objects::{WAIT, environment, organization, wait_ready, wait_reason};

const LEASE_DURATION: u64 = 6;

/// One scenario at a time: each starts operators that reconcile every
/// object in the cluster.
async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `GET path` over plain HTTP/1.0; `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => {
                let close = line.rfind('}').expect("closing brace");
                (&line[..close + 1], line[close + 1..].trim())
            }
            None => line.split_once(' ').expect("name and value"),
        };
        let value: f64 = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((key, after)) = rest.split_once("=\"") {
            let end = after.find('"').expect("closing quote");
            map.insert(
                key.trim_start_matches(',').trim().to_string(),
                after[..end].to_string(),
            );
            rest = &after[end + 1..];
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// Sum of the samples of `name` whose labels include `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn has_series(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    parse_metrics(text).iter().any(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// Polls `check` until it gives `Ok`, or panics with its last complaint.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `/metrics` of the process on `port`, once it answers 200.
async fn scrape(port: u16) -> String {
    eventually(WAIT, &format!("/metrics on port {port}"), || async move {
        match http_get(port, "/metrics") {
            Some((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// `bulkhead run` under a kubeconfig of the test's choosing, with its HTTP
/// server on a known port.
struct OperatorProcess {
    op: support::controlplane::Operator,
    port: u16,
}

impl OperatorProcess {
    fn start(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut all = vec!["--http-addr", addr.as_str()];
        if !args.contains(&"--resync-seconds") {
            all.extend(["--resync-seconds", "20"]);
        }
        all.extend_from_slice(args);
        OperatorProcess {
            op: cp.start_operator_as(kubeconfig, &all),
            port,
        }
    }

    fn log(&self) -> String {
        self.op.log()
    }

    /// Waits until the log says `needle` (`what` names it if it never does).
    async fn wait_for_log(&self, needle: &str, what: &str) {
        eventually(WAIT, what, || async {
            let log = self.log();
            if log.contains(needle) {
                Ok(())
            } else {
                Err(log)
            }
        })
        .await
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    async fn metrics(&self) -> String {
        scrape(self.port).await
    }

    fn stop(&mut self) -> Option<ExitStatus> {
        self.op.stop()
    }
}

/// An Organization its operator deletes with its tenancy, with one admin.
async fn create_org(cp: &ControlPlane, name: &str) -> Api<Organization> {
    let orgs: Api<Organization> = Api::all(cp.client().await);
    organization(name)
        .spec("deletionPolicy", serde_json::json!("Delete"))
        .member(&format!("ops@{name}.example"), "admin")
        .create(&orgs)
        .await;
    orgs
}

/// One Lease that replicas contend for, in a namespace of its own.
struct Election {
    ns: String,
    lease_name: String,
    duration: String,
    leases: Api<Lease>,
}

impl Election {
    /// A fresh namespace named after `prefix`, and a Lease name in it.
    async fn new(cp: &ControlPlane, prefix: &str) -> Election {
        let ns = format!("{prefix}-{}", unique());
        cp.kubectl_ok(&["create", "namespace", &ns]);
        Election {
            leases: Api::namespaced(cp.client().await, &ns),
            ns,
            lease_name: format!("bulkhead-leader-{}", unique()),
            duration: LEASE_DURATION.to_string(),
        }
    }

    /// Starts a replica under `kubeconfig` that contends as `identity`.
    fn start(&self, cp: &ControlPlane, kubeconfig: &Path, identity: &str) -> OperatorProcess {
        OperatorProcess::start(
            cp,
            kubeconfig,
            &[
                "--leader-election=true",
                "--lease-namespace",
                &self.ns,
                "--lease-name",
                &self.lease_name,
                "--lease-duration",
                &self.duration,
                "--identity",
                identity,
            ],
        )
    }

    /// Who holds the Lease now, if anyone.
    async fn holder(&self) -> Option<String> {
        self.leases
            .get_opt(&self.lease_name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }
}

fn total_reconciles(metrics: &str) -> f64 {
    metric(metrics, "bulkhead_reconciles_total", &[])
}

#[tokio::test]
async fn one_leader_reconciles_and_a_standby_takes_over_on_sigterm() {
    let _turn = exclusive().await;
    let cp = ControlPlane::full();
    let election = Election::new(cp, "lease").await;
    let start = |identity: &str| election.start(cp, cp.kubeconfig(), identity);
    let id_a = format!("alpha-{}", unique());
    let id_b = format!("bravo-{}", unique());
    let a = start(&id_a);
    let b = start(&id_b);

    // Exactly one holds the Lease, and its gauge says so; the other waits.
    // On a timeout the message carries both replicas' logs: whatever kept
    // them from taking the Lease is in there.
    let leader_id = eventually(WAIT, "a Lease holder", || async {
        election.holder().await.ok_or_else(|| {
            format!(
                "no holder yet\n--- {id_a}:\n{}\n--- {id_b}:\n{}",
                a.log(),
                b.log()
            )
        })
    })
    .await;
    assert!(
        leader_id == id_a || leader_id == id_b,
        "unexpected holder {leader_id}"
    );
    let (mut leader, mut standby, standby_id) = if leader_id == id_a {
        (a, b, id_b.clone())
    } else {
        (b, a, id_a.clone())
    };
    eventually(WAIT, "the leader's bulkhead_leader gauge at 1", || async {
        let m = leader.metrics().await;
        match metric(&m, "bulkhead_leader", &[]) {
            1.0 => Ok(()),
            v => Err(format!("bulkhead_leader {v}")),
        }
    })
    .await;
    standby
        .wait_for_log(
            "waiting for leadership",
            "the standby waiting for leadership",
        )
        .await;
    assert_eq!(
        metric(&standby.metrics().await, "bulkhead_leader", &[]),
        0.0,
        "the standby does not lead"
    );
    // A standby is healthy and ready to take over.
    assert_eq!(standby.get("/healthz").map(|r| r.0), Some(200));
    eventually(WAIT, "the standby's /readyz at 200", || async {
        match standby.get("/readyz") {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(election.holder().await.as_deref(), Some(leader_id.as_str()));

    // Only the leader reconciles.
    let leader_before = metric(
        &leader.metrics().await,
        "bulkhead_reconciles_total",
        &[("kind", "Organization")],
    );
    let org1 = format!("lead-{}", unique());
    let orgs = create_org(cp, &org1).await;
    wait_ready(&orgs, &org1).await;
    let leader_after = metric(
        &leader.metrics().await,
        "bulkhead_reconciles_total",
        &[("kind", "Organization")],
    );
    assert!(
        leader_after > leader_before,
        "the leader reconciled {org1} ({leader_before} -> {leader_after})"
    );
    assert_eq!(
        total_reconciles(&standby.metrics().await),
        0.0,
        "the standby reconciled nothing"
    );

    // SIGTERM: the leader finishes, releases the Lease and exits 0.
    let stopped_at = Instant::now();
    let status = leader.stop().expect("the leader exits after SIGTERM");
    let leader_log = leader.log();
    assert!(
        status.success(),
        "leader exited with {status}:\n{leader_log}"
    );
    assert!(
        leader_log.contains("released the leader lease"),
        "{leader_log}"
    );

    // The standby takes over: Lease, gauge, reconciles.
    eventually(
        Duration::from_secs(LEASE_DURATION * 5),
        "the standby to hold the Lease",
        || async {
            match election.holder().await {
                Some(h) if h == standby_id => Ok(()),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "takeover: {:.1}s after SIGTERM to the leader (lease duration {LEASE_DURATION}s)",
        stopped_at.elapsed().as_secs_f64()
    );
    eventually(WAIT, "the new leader's bulkhead_leader at 1", || async {
        match metric(&standby.metrics().await, "bulkhead_leader", &[]) {
            1.0 => Ok(()),
            v => Err(format!("bulkhead_leader {v}")),
        }
    })
    .await;
    let org2 = format!("next-{}", unique());
    create_org(cp, &org2).await;
    wait_ready(&orgs, &org2).await;
    let m = standby.metrics().await;
    assert!(
        metric(&m, "bulkhead_reconciles_total", &[("kind", "Organization")]) > 0.0,
        "the new leader reconciles:\n{m}"
    );
    assert!(
        standby
            .log()
            .contains("became leader; starting controllers")
    );

    for name in [&org1, &org2] {
        delete_and_wait(&orgs, name, WAIT).await;
    }
    let status = standby.stop().expect("the new leader exits after SIGTERM");
    assert!(status.success(), "{}", standby.log());
    assert!(standby.log().contains("released the leader lease"));
}

#[tokio::test]
async fn metrics_count_reconciles_durations_errors_and_leadership() {
    let _turn = exclusive().await;
    let cp = ControlPlane::full();
    let mut op = OperatorProcess::start(cp, cp.kubeconfig(), &["--leader-election=false"]);
    eventually(WAIT, "/readyz at 200", || async {
        match op.get("/readyz") {
            Some((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(op.get("/healthz").map(|r| r.0), Some(200));

    // Without leader election the process leads by itself.
    let m = op.metrics().await;
    assert_eq!(metric(&m, "bulkhead_leader", &[]), 1.0, "{m}");

    let org = format!("metrics-{}", unique());
    let orgs = create_org(cp, &org).await;
    wait_ready(&orgs, &org).await;
    let m = op.metrics().await;
    let kind = [("kind", "Organization")];
    assert!(metric(&m, "bulkhead_reconciles_total", &kind) >= 1.0, "{m}");
    assert!(
        metric(&m, "bulkhead_reconcile_duration_seconds_count", &kind) >= 1.0,
        "{m}"
    );
    assert!(
        has_series(
            &m,
            "bulkhead_reconcile_duration_seconds_bucket",
            &[("kind", "Organization"), ("le", "+Inf")]
        ),
        "{m}"
    );
    assert!(
        has_series(&m, "bulkhead_reconcile_duration_seconds_sum", &kind),
        "{m}"
    );

    // An Environment whose Organization does not exist fails its reconcile.
    let env = format!("orphan-{}", unique());
    let envs = create_orphan_environment(cp, &env).await;
    let errors = [("kind", "Environment"), ("reason", "OrganizationNotFound")];
    let m = eventually(WAIT, "the reconcile error counted", || async {
        let m = op.metrics().await;
        if metric(&m, "bulkhead_reconcile_errors_total", &errors) >= 1.0 {
            Ok(m)
        } else {
            Err(m)
        }
    })
    .await;
    assert!(
        parse_metrics(&m)
            .iter()
            .filter(|s| s.name == "bulkhead_reconcile_errors_total")
            .all(|s| s.labels.contains_key("category")),
        "errors carry a category:\n{m}"
    );
    assert!(
        metric(&m, "bulkhead_reconciles_total", &[("kind", "Environment")]) >= 1.0,
        "{m}"
    );

    // Every family is exposed once it has a series.
    for family in [
        "# TYPE bulkhead_reconciles counter",
        "# TYPE bulkhead_reconcile_errors counter",
        "# TYPE bulkhead_reconcile_duration_seconds histogram",
        "# TYPE bulkhead_leader gauge",
    ] {
        assert!(m.contains(family), "{family} missing:\n{m}");
    }

    delete_then_stop(&envs, &env, &orgs, &org, &mut op).await;
}

#[tokio::test]
async fn readyz_is_503_until_the_caches_sync() {
    let _turn = exclusive().await;
    let cp = ControlPlane::full();
    cp.install_crds();
    let u = unique();
    let ns = format!("ready-{u}");
    let sa = format!("bulkhead-{u}");
    cp.kubectl_ok(&["create", "namespace", &ns]);
    cp.kubectl_ok(&["create", "serviceaccount", &sa, "-n", &ns]);
    // Everything the controllers watch except DatabaseClusters: the
    // DatabaseCluster cache cannot sync until that is granted.
    let partial = format!("bulkhead-partial-{u}");
    let role = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {partial}}}
rules:
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get]
- apiGroups: [bulkhead.dev]
  resources: [organizations, environments]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces, configmaps, secrets, resourcequotas]
  verbs: [get, list, watch]
- apiGroups: [postgresql.cnpg.io]
  resources: [clusters, databases]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings, clusterroles, clusterrolebindings]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {partial}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {partial}}}
subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]
"#
    );
    let out = cp.apply_stdin(&role, &[]);
    assert!(out.status.success(), "{out:?}");
    let token = cp.kubectl_ok(&["create", "token", &sa, "-n", &ns, "--duration", "1h"]);
    let kubeconfig = cp.token_kubeconfig(&token, &sa);
    let mut op = OperatorProcess::start(cp, &kubeconfig, &["--leader-election=false"]);

    // Alive, but not ready: one controller's cache can never fill.
    eventually(WAIT, "/healthz at 200", || async {
        match op.get("/healthz") {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}\n{}", op.log())),
        }
    })
    .await;
    op.wait_for_log("starting controllers", "the controllers to start")
        .await;
    let (code, body) = op.get("/readyz").expect("/readyz answers");
    assert_eq!(
        code,
        503,
        "ready without a DatabaseCluster cache: {body}\n{}",
        op.log()
    );
    assert_eq!(op.get("/healthz").map(|r| r.0), Some(200));
    // /metrics is served while not ready.
    assert!(op.metrics().await.contains("bulkhead_leader"));

    // Grant the rest: the watcher retries, the cache syncs, ready.
    let dbc_role = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {partial}-dbc}}
rules:
- apiGroups: [bulkhead.dev]
  resources: [databaseclusters]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {partial}-dbc}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {partial}-dbc}}
subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]
"#
    );
    let out = cp.apply_stdin(&dbc_role, &[]);
    assert!(out.status.success(), "{out:?}");
    eventually(
        Duration::from_secs(180),
        "/readyz at 200 after the grant",
        || async {
            match op.get("/readyz") {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(op.log().contains("caches synced; ready"), "{}", op.log());
    let status = op.stop().expect("exits after SIGTERM");
    assert!(status.success(), "{}", op.log());
    // The HTTP server stops with the process.
    assert!(op.get("/healthz").is_none(), "still serving after exit");

    for name in [partial.clone(), format!("{partial}-dbc")] {
        cp.kubectl_ok(&["delete", "clusterrolebinding,clusterrole", &name]);
    }
}

/// Deletes the scenario's Environment and Organization (the operator
/// removes their finalizers), then stops the operator, which must exit 0.
async fn delete_then_stop(
    envs: &Api<Environment>,
    env: &str,
    orgs: &Api<Organization>,
    org: &str,
    op: &mut OperatorProcess,
) {
    delete_and_wait(envs, env, WAIT).await;
    delete_and_wait(orgs, org, WAIT).await;
    let status = op.stop().expect("exits after SIGTERM");
    assert!(status.success(), "{}", op.log());
}

/// An Environment whose Organization does not exist: every reconcile of it
/// fails with OrganizationNotFound, which puts an error, a reason and a
/// condition on every path the logs and metrics report.
async fn create_orphan_environment(cp: &ControlPlane, env: &str) -> Api<Environment> {
    let envs: Api<Environment> = Api::all(cp.client().await);
    environment(env, &format!("missing-{env}"), "development")
        .create(&envs)
        .await;
    wait_reason(&envs, env, "Ready", "False", "OrganizationNotFound").await;
    envs
}

#[tokio::test]
async fn text_logs_written_to_a_file_have_no_colour_codes() {
    let _turn = exclusive().await;
    let cp = ControlPlane::full();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // As a person runs it with `> operator.log`: no NO_COLOR, stdout a file.
    let mut op = cp.start_operator_env(
        cp.kubeconfig(),
        &[
            "--http-addr",
            &addr,
            "--leader-election=false",
            "--log-format=text",
        ],
        &[("NO_COLOR", None)],
    );
    // Ready (caches synced) before the stop, so shutdown is the ordinary one.
    eventually(WAIT, "/readyz at 200", || async {
        match http_get(port, "/readyz") {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}\n{}", op.log())),
        }
    })
    .await;
    let status = op
        .stop()
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", op.log()));
    let log = op.log();
    assert!(status.success(), "{log}");
    assert!(log.contains(" INFO "), "text format: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{}",
        log.escape_debug()
    );
}

/// PromQL in the chart's Grafana dashboard: each query's metric names
/// (`bulkhead_*`) and the labels it groups or matches by.
fn dashboard_queries() -> Vec<String> {
    let path = support::controlplane::repo().join("charts/bulkhead/dashboards/bulkhead.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push(expr.to_string());
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = var["query"]["query"].as_str() {
            queries.push(q.to_string());
        }
    }
    queries
}

/// Identifiers of a PromQL expression outside strings, with the character
/// that follows each.
fn identifiers(expr: &str) -> Vec<(String, Option<char>)> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut current = String::new();
    let mut in_string = false;
    let mut in_range = false;
    while let Some(c) = chars.next() {
        if in_string {
            if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$' {
            current.push(c);
            continue;
        }
        if !current.is_empty() && !in_range {
            let next = std::iter::once(c)
                .chain(chars.clone())
                .find(|n| !n.is_whitespace());
            out.push((std::mem::take(&mut current), next));
        }
        current.clear();
        match c {
            '"' => in_string = true,
            '[' => in_range = true,
            ']' => in_range = false,
            _ => {}
        }
    }
    if !current.is_empty() {
        out.push((current, None));
    }
    out
}

/// Labels Prometheus puts on every scraped series itself (from the target).
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "instance",
    "job",
    "service",
    "container",
];

#[tokio::test]
async fn json_logs_and_the_dashboard_follow_real_reconciles() {
    let _turn = exclusive().await;
    let cp = ControlPlane::full();
    let mut op = OperatorProcess::start(
        cp,
        cp.kubeconfig(),
        &["--leader-election=false", "--log-format=json"],
    );
    let org = format!("dash-{}", unique());
    let orgs = create_org(cp, &org).await;
    wait_ready(&orgs, &org).await;
    let env = format!("dash-orphan-{}", unique());
    let envs = create_orphan_environment(cp, &env).await;
    let metrics = eventually(WAIT, "errors and objects in /metrics", || async {
        let m = op.metrics().await;
        let errors = [("kind", "Environment"), ("reason", "OrganizationNotFound")];
        let not_ready = [
            ("kind", "Environment"),
            ("condition", "Synced"),
            ("status", "False"),
            ("reason", "OrganizationNotFound"),
        ];
        if metric(&m, "bulkhead_reconcile_errors_total", &errors) >= 1.0
            && metric(&m, "bulkhead_objects", &not_ready) >= 1.0
            && metric(
                &m,
                "bulkhead_objects",
                &[
                    ("kind", "Organization"),
                    ("condition", "Ready"),
                    ("status", "True"),
                ],
            ) >= 1.0
        {
            Ok(m)
        } else {
            Err(m)
        }
    })
    .await;

    // Every query of the dashboard names series this operator exports, and
    // groups or matches only by labels they carry (or Prometheus adds).
    let samples = parse_metrics(&metrics);
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    for query in &queries {
        let ids = identifiers(query);
        let names: Vec<&str> = ids
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| id.starts_with("bulkhead_"))
            .collect();
        assert!(!names.is_empty(), "{query} uses no bulkhead metric");
        let mut labels = BTreeMap::<&str, ()>::new();
        for name in &names {
            let series: Vec<&Sample> = samples.iter().filter(|s| s.name == *name).collect();
            assert!(
                !series.is_empty(),
                "{query}: the operator exports no {name}:\n{metrics}"
            );
            for s in series {
                for key in s.labels.keys() {
                    labels.insert(key.as_str(), ());
                }
            }
        }
        // Labels: what `by (...)` lists and what `{...}` matches on.
        let mut in_by = false;
        for (id, next) in &ids {
            match (id.as_str(), next) {
                ("by" | "without", _) => in_by = true,
                (_, Some(')')) if in_by => {
                    in_by = false;
                    check_label(query, id, &labels);
                }
                _ if in_by => check_label(query, id, &labels),
                (_, Some('=' | '!')) => check_label(query, id, &labels),
                _ => {}
            }
        }
    }

    // JSON logs: the failing reconciles carry the object, the reason and a
    // trace id; lines of one reconcile share it.
    let log = op.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "reconcile ended in error" && l["name"] == env.as_str())
        .collect();
    assert!(
        !failed.is_empty(),
        "no failed reconcile logged for {env}:\n{log}"
    );
    for line in &failed {
        assert_eq!(line["kind"], "Environment", "{line}");
        assert_eq!(line["namespace"], "", "cluster-scoped: {line}");
        assert_eq!(line["reason"], "OrganizationNotFound", "{line}");
        let trace = line["trace_id"].as_str().unwrap_or_default();
        assert_eq!(trace.len(), 32, "{line}");
        assert!(line["span_id"].is_string(), "{line}");
    }
    let traces: std::collections::BTreeSet<&str> = failed
        .iter()
        .filter_map(|l| l["trace_id"].as_str())
        .collect();
    assert_eq!(traces.len(), failed.len(), "one trace id per reconcile");
    // The Warning line written inside the reconcile has the same trace id
    // as the line that ends it.
    let warning = lines
        .iter()
        .find(|l| {
            l["level"] == "WARN"
                && l["message"] == "reconcile failed"
                && l["name"] == env.as_str()
                && l["reason"] == "OrganizationNotFound"
        })
        .unwrap_or_else(|| panic!("no Warning for {env}:\n{log}"));
    assert!(
        traces.contains(warning["trace_id"].as_str().unwrap_or_default()),
        "{warning}"
    );

    delete_then_stop(&envs, &env, &orgs, &org, &mut op).await;
}

fn check_label(query: &str, label: &str, exported: &BTreeMap<&str, ()>) {
    assert!(
        exported.contains_key(label) || TARGET_LABELS.contains(&label),
        "{query}: no series it uses has the label {label} (has {:?})",
        exported.keys().collect::<Vec<_>>()
    );
}

/// Requests the operator sent, except watches (opened once and kept), from
/// its own `bulkhead_apiserver_requests_total`: `(total, per verb/resource)`.
fn requests_sent(metrics: &str) -> (f64, BTreeMap<String, f64>) {
    let mut by = BTreeMap::new();
    for s in parse_metrics(metrics)
        .into_iter()
        .filter(|s| s.name == "bulkhead_apiserver_requests_total")
        .filter(|s| s.labels.get("verb").map(String::as_str) != Some("watch"))
    {
        let key = format!("{} {}", s.labels["verb"], s.labels["resource"]);
        *by.entry(key).or_insert(0.0) += s.value;
    }
    (by.values().sum(), by)
}

#[tokio::test]
async fn an_unchanged_world_costs_no_requests_and_a_childs_change_wakes_its_owner() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    use kube::api::{Patch, PatchParams};

    let _turn = exclusive().await;
    let cp = ControlPlane::full();
    cp.install_crds();
    let client = cp.client().await;
    let name = format!("quiet-{}", unique());
    let orgs: Api<Organization> = Api::all(client.clone());
    let envs: Api<Environment> = Api::all(client.clone());
    organization(&name)
        .member(&format!("ops@{name}.example"), "admin")
        .spec("deletionPolicy", serde_json::json!("Delete"))
        .create(&orgs)
        .await;
    environment(&name, &name, "development")
        .developers("devs")
        .spec(
            "config",
            serde_json::json!({ "data": { "KEEP": "1", "DROP": "2" } }),
        )
        .create(&envs)
        .await;

    // A 2 s resync: several full passes over a converged world.
    let mut op = OperatorProcess::start(
        cp,
        cp.kubeconfig(),
        &["--leader-election=false", "--resync-seconds", "2"],
    );
    wait_ready(&orgs, &name).await;
    wait_ready(&envs, &name).await;
    // Let the reconciles the creation itself caused finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = op.metrics().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = op.metrics().await;
    let reconciles = total_reconciles(&after) - total_reconciles(&before);
    assert!(
        reconciles >= 4.0,
        "the resyncs ran ({reconciles} reconciles)"
    );
    let (sent_before, by_before) = requests_sent(&before);
    let (sent_after, by_after) = requests_sent(&after);
    let sent: BTreeMap<&String, f64> = by_after
        .iter()
        .map(|(k, v)| (k, v - by_before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect();
    assert_eq!(
        sent_after - sent_before,
        0.0,
        "{reconciles} reconciles of a converged world sent requests: {sent:?}\n{}",
        op.log()
    );
    assert!(
        metric(&after, "bulkhead_cached_children", &[]) >= 5.0,
        "children are cached:\n{after}"
    );
    op.stop();

    // Without resyncs, a change to a child still reaches its owner: the
    // watch behind the child cache wakes it.
    let mut op = OperatorProcess::start(
        cp,
        cp.kubeconfig(),
        &["--leader-election=false", "--resync-seconds", "3600"],
    );
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), &name);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
    delete_and_wait_recreated(
        &rbs,
        "bulkhead-access-developer",
        WAIT,
        "RoleBinding restored without a resync",
    )
    .await;
    cms.patch(
        "bulkhead-environment",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "data": { "KEEP": "edited" } })),
    )
    .await
    .expect("edit ConfigMap");
    wait_for(
        &cms,
        "bulkhead-environment",
        WAIT,
        "hand edit reverted without a resync",
        |cm| {
            cm.data
                .as_ref()
                .and_then(|d| d.get("KEEP"))
                .map(String::as_str)
                == Some("1")
        },
    )
    .await;

    // A key dropped from the spec leaves the ConfigMap: comparing fields
    // alone would call the ConfigMap up to date, the applied digest does not.
    envs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(serde_json::json!([
                { "op": "remove", "path": "/spec/config/data/DROP" }
            ]))
            .expect("json patch"),
        ),
    )
    .await
    .expect("drop a config key");
    wait_for(
        &cms,
        "bulkhead-environment",
        WAIT,
        "dropped key removed",
        |cm| {
            let data = cm.data.clone().unwrap_or_default();
            !data.contains_key("DROP") && data.get("KEEP").map(String::as_str) == Some("1")
        },
    )
    .await;

    delete_then_stop(&envs, &name, &orgs, &name, &mut op).await;
}

/// A TCP proxy on 127.0.0.1 in front of the apiserver that can be cut:
/// while cut, open connections are dropped and new ones are closed at once,
/// as a network partition looks to the process behind it. Counts the bytes
/// it forwards from the client, with the time of the last ones.
struct Partition {
    addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    last_sent: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Partition {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let last_sent = Arc::new(std::sync::Mutex::new(None));
        let (is_open, sent) = (open.clone(), last_sent.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !is_open.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cuts = cuts.clone();
                let sent = sent.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match tokio::io::AsyncReadExt::read(&mut from_client, &mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    *sent.lock().expect("lock") = Some(Instant::now());
                                    if tokio::io::AsyncWriteExt::write_all(
                                        &mut to_server,
                                        &buf[..n],
                                    )
                                    .await
                                    .is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut from_server, &mut to_client);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Partition {
            addr,
            open,
            cut,
            last_sent,
        }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn heal(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn last_sent(&self) -> Option<Instant> {
        *self.last_sent.lock().expect("lock")
    }
}

/// The admin kubeconfig, parsed, and where its apiserver listens.
fn admin_kubeconfig(cp: &ControlPlane) -> (serde_yaml_ng::Value, SocketAddr) {
    let text = std::fs::read_to_string(cp.kubeconfig()).expect("read kubeconfig");
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("kubeconfig yaml");
    let apiserver = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .and_then(|s| s.strip_prefix("https://"))
        .and_then(|s| s.trim_end_matches('/').parse().ok())
        .expect("the apiserver at https://<ip>:<port>");
    (config, apiserver)
}

/// The admin kubeconfig with its server replaced by `addr` (the apiserver's
/// certificate names 127.0.0.1, so TLS still verifies through the proxy).
fn kubeconfig_through(cp: &ControlPlane, addr: SocketAddr) -> std::path::PathBuf {
    let (mut config, _) = admin_kubeconfig(cp);
    config["clusters"][0]["cluster"]["server"] =
        serde_yaml_ng::Value::String(format!("https://{addr}"));
    let path = cp
        .kubeconfig()
        .with_file_name(format!("kubeconfig-partition-{}", unique()));
    std::fs::write(&path, serde_yaml_ng::to_string(&config).expect("yaml"))
        .expect("write kubeconfig");
    path
}

/// Time of the first log line containing `what` (text logs start with an
/// RFC 3339 UTC timestamp, so they compare as strings).
fn logged_at(log: &str, what: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

#[tokio::test]
async fn a_leader_cut_off_from_the_apiserver_stops_before_a_standby_takes_over() {
    let _turn = exclusive().await;
    let cp = ControlPlane::full();
    let election = Election::new(cp, "partition").await;
    // The leader reaches the apiserver only through the proxy.
    let proxy = Partition::start(admin_kubeconfig(cp).1).await;
    let through_proxy = kubeconfig_through(cp, proxy.addr);
    let mut a = election.start(cp, &through_proxy, "cut-off");
    eventually(WAIT, "the proxied replica to lead", || async {
        match election.holder().await {
            Some(h) if h == "cut-off" => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let mut b = election.start(cp, cp.kubeconfig(), "standby");
    b.wait_for_log("waiting for leadership", "the standby waiting")
        .await;
    // The leader works through the proxy until the cut.
    let org = format!("partition-{}", unique());
    let orgs = create_org(cp, &org).await;
    wait_ready(&orgs, &org).await;

    let cut_at = Instant::now();
    proxy.cut();
    eventually(
        Duration::from_secs(LEASE_DURATION * 5),
        "the standby to take the Lease",
        || async {
            match election.holder().await {
                Some(h) if h == "standby" => Ok(()),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "partition: standby leads {:.1}s after the cut (lease {LEASE_DURATION}s)",
        cut_at.elapsed().as_secs_f64()
    );
    // The cut-off leader stopped on its own, before the standby started.
    let status =
        a.op.wait_exit(WAIT)
            .unwrap_or_else(|| panic!("the cut-off leader kept running:\n{}", a.log()));
    assert!(!status.success(), "it exits to be restarted as a standby");
    // The standby writes the Lease before it logs that it leads.
    b.wait_for_log("became leader; starting controllers", "the standby leading")
        .await;
    let (a_log, b_log) = (a.log(), b.log());
    let stopped = logged_at(&a_log, "lost the leader lease")
        .unwrap_or_else(|| panic!("the cut-off leader never said it stopped:\n{a_log}"));
    let started = logged_at(&b_log, "became leader; starting controllers")
        .unwrap_or_else(|| panic!("the standby never started:\n{b_log}"));
    assert!(
        stopped < started,
        "the old leader stopped at {stopped}, after the new one started at {started}"
    );
    // Healing the network changes nothing: the old leader sent nothing more.
    let last = proxy.last_sent();
    proxy.heal();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(proxy.last_sent(), last, "the old leader talked again");

    // The new leader carries on.
    let next = format!("after-{}", unique());
    create_org(cp, &next).await;
    wait_ready(&orgs, &next).await;
    for name in [&org, &next] {
        delete_and_wait(&orgs, name, WAIT).await;
    }
    assert!(b.stop().expect("exits").success(), "{}", b.log());
}
