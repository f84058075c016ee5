//! The scale benchmark of issue #12, on the real local control plane: how
//! the operator converges N Organization+Environment sets and N
//! DatabaseClusters compared with the least the apiserver has to do for the
//! same result, and what an unchanged world costs it at every resync.
//!
//! `cargo bench --bench scale`. Under `cargo test` it only checks that it
//! builds. Environment:
//!
//! - `BULKHEAD_BENCH_SETS` (default `100,300,1000`): the N of each sets phase.
//! - `BULKHEAD_BENCH_DATABASES` (default: the smallest N; `0` skips).
//! - `BULKHEAD_BENCH_STEADY_SETS` (default 100) and
//!   `BULKHEAD_BENCH_STEADY_SECONDS` (default 180; `0` skips): the
//!   steady-state window, with the operator at `--resync-seconds 60`.
//! - `BULKHEAD_BENCH_TIMEOUT_SECONDS` (default 1800): how long one operator
//!   phase may take; a phase that runs out reports how far it got.
//!
//! How it measures. The control plane is etcd + kube-apiserver only (with
//! CloudNativePG's CRDs, no CloudNativePG manager), so every request the
//! apiserver counts in `apiserver_request_total` during a phase is the
//! operator's, the baseline's or the bench's own; the bench counts its own
//! with a client middleware and subtracts them. Non-resource requests
//! (openapi, /readyz) and the apiserver's own identity Lease renewals are
//! left out. API discovery (`GET /apis/<group>/<version>`, which the
//! CloudNativePG provider sends to see whether CloudNativePG is installed)
//! is not in `apiserver_request_total` at all, so it is not counted. kube-controller-manager (namespace and garbage
//! collector controllers only) runs between phases, to delete what a phase
//! made, never during one.
//!
//! - Operator phase: the bench creates the bulkhead objects, starts a watch
//!   on them, starts `bulkhead run --concurrency 4` and times until every
//!   one is Ready (DatabaseClusters: `Synced=True`, the condition the
//!   controller sets once the provider wrote the CloudNativePG objects;
//!   without a CloudNativePG manager a Cluster never becomes Ready). Request
//!   counts run from just before the operator starts until it has exited, so
//!   its watches are counted once they end. CPU is utime+stime from
//!   /proc/<pid>/stat, peak RSS is VmHWM.
//! - Baseline: the same children on the same apiserver, written by one
//!   kube-rs client with 4 requests in flight (`buffer_unordered(4)`): a
//!   server-side apply of each child and one status apply per bulkhead
//!   object. The bodies are what the operator applied in the operator phase
//!   (its field manager's fields, from managedFields), renamed to the
//!   baseline's objects; namespaces go first so the namespaced children
//!   have somewhere to land.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead::api::{DatabaseCluster, Environment, LABEL_MANAGED_BY, MANAGER, Organization};
use bulkhead::provider::kubernetes::{LABEL_OWNER_UID, merge};
use bulkhead::reconcile::managed::FIELD_MANAGER;
use futures::{StreamExt, stream};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{Discovery, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use serde_json::{Map, Value, json};
use support::controlplane::{ControlPlane, Operator, unique, watchdog};
use support::procfs::{clock_ticks_per_second, cpu_ticks, peak_rss_kib, stat_fields};

/// Label on every bulkhead object the bench creates: which phase and side.
const BENCH_LABEL: &str = "bench.bulkhead.dev/run";
/// Field manager of the baseline's writes.
const BASELINE_MANAGER: &str = "bulkhead-bench-baseline";
/// Requests in flight in the baseline, as the operator's `--concurrency`.
const IN_FLIGHT: usize = 4;
/// `--resync-seconds` of the steady-state window.
const RESYNC_STEADY: &str = "60";

// ------------------------------------------------------------ request counts

/// A request as `apiserver_request_total` labels it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    verb: String,
    group: String,
    resource: String,
    subresource: String,
}

impl Key {
    fn describe(&self) -> String {
        let mut s = format!("{} ", self.verb);
        if !self.group.is_empty() {
            s.push_str(&self.group);
            s.push('/');
        }
        s.push_str(&self.resource);
        if !self.subresource.is_empty() {
            s.push('/');
            s.push_str(&self.subresource);
        }
        s
    }

    /// Non-resource requests (openapi, /readyz): never the operator's.
    fn is_non_resource(&self) -> bool {
        self.resource.is_empty()
    }

    /// The apiserver's own loops, which the operator cannot cause: its
    /// identity Lease renewals (the operator runs without leader election
    /// here) and the ClusterIP and IPAddress repair loops, which list
    /// Services, IPAddresses and ServiceCIDRs every few minutes. Counted
    /// apart and printed, never as the operator's.
    fn is_apiserver_loop(&self) -> bool {
        match (self.group.as_str(), self.resource.as_str()) {
            ("coordination.k8s.io", "leases") => true,
            ("", "services") | ("networking.k8s.io", "ipaddresses" | "servicecidrs") => {
                self.verb == "LIST"
            }
            _ => false,
        }
    }
}

type Counts = BTreeMap<Key, u64>;

#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    writes: u64,
    reads: u64,
    watches: u64,
}

fn totals(counts: &Counts) -> Totals {
    let mut t = Totals::default();
    for (k, n) in counts {
        match k.verb.as_str() {
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION" => t.writes += n,
            "GET" | "LIST" => t.reads += n,
            "WATCH" => t.watches += n,
            _ => {}
        }
    }
    t
}

/// Requests a client sent, by the apiserver's labels.
#[derive(Clone, Default)]
struct Sent(Arc<Mutex<Counts>>);

impl Sent {
    fn record(&self, key: Key) {
        *self
            .0
            .lock()
            .expect("request counter")
            .entry(key)
            .or_default() += 1;
    }
    fn snapshot(&self) -> Counts {
        self.0.lock().expect("request counter").clone()
    }
}

/// The labels the apiserver gives a request (after k8s.io/apiserver's
/// RequestInfo and CleanVerb); `None` for non-resource paths.
fn classify<B>(req: &http::Request<B>) -> Option<Key> {
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let (group, mut rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    if rest.first() == Some(&"namespaces")
        && rest.len() > 2
        && !matches!(rest[2], "status" | "finalize")
    {
        rest = &rest[2..];
    }
    let resource = rest.first()?;
    let named = rest.len() > 1;
    let subresource = rest.get(2..).map(|s| s.join("/")).unwrap_or_default();
    let watch = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let apply = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    let verb = match req.method().as_str() {
        "GET" if watch => "WATCH",
        "GET" if named => "GET",
        "GET" => "LIST",
        "PATCH" if apply => "APPLY",
        "DELETE" if !named => "DELETECOLLECTION",
        other => other,
    };
    Some(Key {
        verb: verb.to_string(),
        group: group.to_string(),
        resource: resource.to_string(),
        subresource,
    })
}

/// `apiserver_request_total` summed over everything but verb and resource,
/// the throttled (429) ones alone, and the number of failed (5xx) ones.
fn parse_request_total(text: &str) -> (Counts, Counts, u64) {
    let mut counts = Counts::new();
    let mut throttled = Counts::new();
    let mut failed = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        let mut l: HashMap<&str, &str> = HashMap::new();
        let mut s = labels;
        while let Some((k, v)) = s.split_once("=\"") {
            let Some(end) = v.find('"') else { break };
            l.insert(k.trim_start_matches(','), &v[..end]);
            s = &v[end + 1..];
        }
        let get = |k: &str| l.get(k).copied().unwrap_or("").to_string();
        let code = get("code");
        let key = Key {
            verb: get("verb"),
            group: get("group"),
            resource: get("resource"),
            subresource: get("subresource"),
        };
        if code == "429" {
            *throttled.entry(key.clone()).or_default() += value;
        } else if code.starts_with('5') {
            failed += value;
        }
        *counts.entry(key).or_default() += value;
    }
    (counts, throttled, failed)
}

// ------------------------------------------------------------ processes

/// The kube-apiserver the control plane started (from its pids file).
fn apiserver_pid(cp: &ControlPlane) -> u32 {
    std::fs::read_to_string(cp.dir().join("pids"))
        .expect("the control plane's pids file")
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "kube-apiserver")
        })
        .expect("a running kube-apiserver among the control plane's pids")
}

/// kube-controller-manager with only the namespace and garbage-collector
/// controllers, to delete what a phase made; killed when dropped.
struct Deleters(std::process::Child);

impl Drop for Deleters {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------ objects

/// A bulkhead object the bench created.
#[derive(Clone, Debug)]
struct Created {
    ar: ApiResource,
    namespace: Option<String>,
    name: String,
    uid: String,
}

/// One object to write in the baseline.
#[derive(Clone, Debug)]
struct Template {
    ar: ApiResource,
    namespace: Option<String>,
    name: String,
    body: Value,
    /// A status write (the status subresource of a bulkhead object).
    status: bool,
}

impl Template {
    fn is_namespace(&self) -> bool {
        !self.status && self.ar.group.is_empty() && self.ar.plural == "namespaces"
    }
}

fn org_ar() -> ApiResource {
    ApiResource::erase::<Organization>(&())
}
fn env_ar() -> ApiResource {
    ApiResource::erase::<Environment>(&())
}
fn dbc_ar() -> ApiResource {
    ApiResource::erase::<DatabaseCluster>(&())
}

fn organization(name: &str, run: &str) -> Value {
    json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Organization",
        "metadata": {"name": name, "labels": {BENCH_LABEL: run}},
        "spec": {"members": [{"email": "a@bench.example", "role": "admin"}], "billing": {"plan": "launch"}},
    })
}

fn environment(name: &str, org: &str, run: &str) -> Value {
    json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": name, "labels": {BENCH_LABEL: run}},
        "spec": {"organizationRef": {"name": org}, "tier": "development",
                 "access": [{"role": "developer", "subjects": [{"kind": "Group", "name": "devs"}]}],
                 "config": {"data": {"K": "V"}}},
    })
}

fn database_cluster(name: &str, namespace: &str, run: &str) -> Value {
    json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": name, "namespace": namespace, "labels": {BENCH_LABEL: run}},
        "spec": {"databases": [{"name": "orders", "owner": "app"}],
                 "users": [{"name": "app", "databases": ["orders"], "privileges": "owner"}]},
    })
}

fn api_for(client: &Client, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

fn condition_true(obj: &Value, type_: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
}

/// A condition as "status reason: message" (or "no <type> condition").
fn condition_state(obj: &Value, type_: &str) -> String {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            format!(
                "{type_}={} {}: {}",
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("?"),
                c["message"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_else(|| format!("no {type_} condition"))
}

/// The condition that says a bulkhead object converged in this bench.
fn done_condition(ar: &ApiResource) -> &'static str {
    if ar.kind == "DatabaseCluster" {
        "Synced"
    } else {
        "Ready"
    }
}

/// The part of `live` a managedFields `fieldsV1` set names: what that
/// manager applied.
fn owned_fields(live: &Value, fields: &Value) -> Value {
    let Some(fields) = fields.as_object() else {
        return live.clone();
    };
    if fields.keys().all(|k| k == ".") {
        return live.clone();
    }
    match live {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, sub) in fields {
                if let Some(name) = k.strip_prefix("f:")
                    && let Some(v) = map.get(name)
                {
                    out.insert(name.to_string(), owned_fields(v, sub));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut picked: Vec<(usize, Value)> = Vec::new();
            for (k, sub) in fields {
                if let Some(key) = k.strip_prefix("k:") {
                    let Ok(Value::Object(key)) = serde_json::from_str::<Value>(key) else {
                        continue;
                    };
                    if let Some((i, item)) = items
                        .iter()
                        .enumerate()
                        .find(|(_, item)| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))
                    {
                        picked.push((i, owned_fields(item, sub)));
                    }
                } else if let Some(v) = k.strip_prefix("v:") {
                    if let Ok(v) = serde_json::from_str::<Value>(v) {
                        let i = items.iter().position(|x| x == &v).unwrap_or(usize::MAX);
                        picked.push((i, v));
                    }
                } else if let Some(i) = k.strip_prefix("i:").and_then(|i| i.parse::<usize>().ok())
                    && let Some(item) = items.get(i)
                {
                    picked.push((i, owned_fields(item, sub)));
                }
            }
            picked.sort_by_key(|(i, _)| *i);
            Value::Array(picked.into_iter().map(|(_, v)| v).collect())
        }
        other => other.clone(),
    }
}

/// A live object's `metadata.name` and `metadata.namespace`.
fn name_and_namespace(live: &Value) -> (String, Option<String>) {
    let name = live
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = live
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    (name, namespace)
}

/// What the operator applied to a child, as a body to apply again.
fn child_template(ar: &ApiResource, live: &Value) -> Template {
    let (name, namespace) = name_and_namespace(live);
    let entries = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let applied: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["operation"] == "Apply" && e.get("subresource").and_then(Value::as_str).is_none()
        })
        .collect();
    // The operator's own field manager first; any other apply otherwise.
    let ours: Vec<&Value> = applied
        .iter()
        .copied()
        .filter(|e| e["manager"] == FIELD_MANAGER)
        .collect();
    let chosen = if ours.is_empty() { applied } else { ours };
    let mut fields = Value::Object(Map::new());
    for e in &chosen {
        merge(&mut fields, owned_fields(live, &e["fieldsV1"]));
    }
    if chosen.is_empty() {
        // Not applied at all (never seen so far): the whole object, less
        // what the apiserver sets.
        fields = live.clone();
        if let Some(obj) = fields.as_object_mut() {
            obj.remove("status");
        }
        if let Some(meta) = fields.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "managedFields",
            ] {
                meta.remove(k);
            }
        }
    }
    let mut body = json!({
        "apiVersion": ar.api_version, "kind": ar.kind, "metadata": { "name": name },
    });
    if let Some(ns) = &namespace {
        body["metadata"]["namespace"] = json!(ns);
    }
    merge(&mut body, fields);
    Template {
        ar: ar.clone(),
        namespace,
        name,
        body,
        status: false,
    }
}

fn status_template(ar: &ApiResource, live: &Value) -> Template {
    let (name, namespace) = name_and_namespace(live);
    Template {
        ar: ar.clone(),
        namespace,
        name,
        body: json!({ "apiVersion": ar.api_version, "kind": ar.kind, "status": live["status"] }),
        status: true,
    }
}

/// Renames an operator-phase object to its baseline counterpart: UIDs as
/// whole strings, name tokens inside any string.
struct Renames {
    uids: HashMap<String, String>,
    tokens: Vec<(String, String)>,
}

impl Renames {
    fn string(&self, s: &str) -> String {
        if let Some(uid) = self.uids.get(s) {
            return uid.clone();
        }
        let mut out = s.to_string();
        for (from, to) in &self.tokens {
            if out.contains(from.as_str()) {
                out = out.replace(from.as_str(), to);
            }
        }
        out
    }

    fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.string(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (self.string(k), self.value(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn template(&self, t: &Template) -> Template {
        Template {
            ar: t.ar.clone(),
            namespace: t.namespace.as_deref().map(|n| self.string(n)),
            name: self.string(&t.name),
            body: self.value(&t.body),
            status: t.status,
        }
    }
}

// ------------------------------------------------------------ measuring

struct Mark {
    apiserver: Counts,
    throttled: Counts,
    failed: u64,
    own: Counts,
    apiserver_ticks: u64,
}

/// What the apiserver served between two marks, less the bench's own
/// requests and the background.
#[derive(Clone, Debug, Default)]
struct Window {
    requests: Counts,
    /// The apiserver's own loops in the window (not in `requests`).
    apiserver_loops: Counts,
    /// Answered 429 (already in `requests`): retried by the client.
    throttled: Counts,
    failed: u64,
    apiserver_cpu: f64,
}

impl Window {
    fn totals(&self) -> Totals {
        totals(&self.requests)
    }
}

/// How many slowest (and still waiting) objects a phase names.
const LATEST: usize = 3;

/// An object that became done late (or is still waiting): when, and its
/// done condition as last seen before.
#[derive(Debug, Clone)]
struct Late {
    at: Instant,
    key: String,
    was: String,
}

/// What one readiness watch saw.
struct Watched {
    done: usize,
    at: Option<Instant>,
    latest: Vec<Late>,
    waiting: Vec<Late>,
}

/// What the operator did in one phase.
#[derive(Debug)]
struct OperatorRun {
    took: Option<Duration>,
    /// Per kind: how many were done, of how many.
    progress: Vec<(String, usize, usize)>,
    /// The slowest objects to become done and those never done, by kind,
    /// with the operator's log lines that name them.
    late: Vec<String>,
    rss_kib: u64,
    cpu: f64,
    window: Window,
}

#[derive(Debug)]
struct BaselineRun {
    took: Duration,
    /// Per stage (namespaces, the rest): wall time.
    stages: Vec<Duration>,
    /// Per kind (statuses apart): requests and their summed latency.
    latency: BTreeMap<String, (u32, Duration)>,
    window: Window,
    client: Counts,
    errors: Vec<String>,
}

/// One compared phase (sets or DatabaseClusters).
struct Compared {
    n: usize,
    /// Objects the phase is made of: children plus bulkhead objects.
    objects: usize,
    /// Managed children plus bulkhead objects in the cluster when the
    /// operator was done: what its caches hold.
    cached: usize,
    op: OperatorRun,
    baseline: Option<BaselineRun>,
    fallbacks: usize,
}

struct Steady {
    sets: usize,
    objects: usize,
    seconds: f64,
    resyncs: f64,
    window: Window,
    operator_cpu: f64,
    converged: bool,
}

/// What [`Bench::apply`] did.
#[derive(Debug, Default)]
struct Applied {
    stages: Vec<Duration>,
    latency: BTreeMap<String, (u32, Duration)>,
    errors: Vec<String>,
}

/// A readiness target of an operator phase.
struct Target {
    ar: ApiResource,
    selector: String,
    expected: usize,
}

struct Started {
    operator: Operator,
    started: Instant,
    done: Option<Instant>,
    progress: Vec<(String, usize, usize)>,
    late: Vec<(String, Late, bool)>,
}

struct Bench {
    cp: &'static ControlPlane,
    client: Client,
    sent: Sent,
    apiserver: u32,
    ticks: f64,
    /// Every listable resource outside bulkhead.dev (for finding children).
    resources: Vec<ApiResource>,
    run: String,
    timeout: Duration,
}

async fn counting_client(cp: &ControlPlane, sent: &Sent) -> Client {
    let sent = sent.clone();
    let kubeconfig = Kubeconfig::read_from(cp.kubeconfig()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig to config");
    ClientBuilder::try_from(config)
        .expect("kube client stack")
        // Counts every request the client sends.
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: http::Request<kube::client::Body>| {
                if let Some(key) = classify(&req) {
                    sent.record(key);
                }
                req
            },
        ))
        .build()
}

/// Watches `target` until every object reports its done condition or
/// `deadline` passes; says when its first list is in through `synced`.
async fn watch_until_done(
    api: Api<DynamicObject>,
    target_selector: String,
    expected: usize,
    condition: &'static str,
    synced: tokio::sync::oneshot::Sender<()>,
    deadline: tokio::time::Instant,
) -> Watched {
    let mut done: HashMap<String, bool> = HashMap::new();
    // The done condition as last seen (for naming what the slowest waited
    // on), and the newest LATEST objects to become done.
    let mut state: HashMap<String, String> = HashMap::new();
    let mut latest: Vec<Late> = Vec::new();
    let mut relisting: Option<HashMap<String, bool>> = None;
    let mut synced = Some(synced);
    let key = |o: &DynamicObject| {
        format!(
            "{}/{}",
            o.metadata.namespace.clone().unwrap_or_default(),
            o.metadata.name.clone().unwrap_or_default()
        )
    };
    let is_done = |o: &DynamicObject| condition_true(&o.data, condition);
    let watched = |done: &HashMap<String, bool>,
                   state: &HashMap<String, String>,
                   latest: Vec<Late>,
                   at: Option<Instant>| {
        let mut waiting: Vec<Late> = done
            .iter()
            .filter(|(_, d)| !**d)
            .take(LATEST)
            .map(|(k, _)| Late {
                at: Instant::now(),
                key: k.clone(),
                was: state.get(k).cloned().unwrap_or_default(),
            })
            .collect();
        waiting.sort_by(|a, b| a.key.cmp(&b.key));
        Watched {
            done: done.values().filter(|d| **d).count(),
            at,
            latest,
            waiting,
        }
    };
    let stream =
        watcher(api, watcher::Config::default().labels(&target_selector)).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let count = done.values().filter(|d| **d).count();
        if synced.is_none() && count >= expected {
            return watched(&done, &state, latest, Some(Instant::now()));
        }
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            return watched(&done, &state, latest, None);
        };
        match event {
            Ok(watcher::Event::Init) => relisting = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(o)) => {
                state.insert(key(&o), condition_state(&o.data, condition));
                if let Some(r) = relisting.as_mut() {
                    r.insert(key(&o), is_done(&o));
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(r) = relisting.take() {
                    done = r;
                }
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
            }
            Ok(watcher::Event::Apply(o)) => {
                let k = key(&o);
                let now_done = is_done(&o);
                if now_done && done.get(&k) == Some(&false) {
                    latest.push(Late {
                        at: Instant::now(),
                        key: k.clone(),
                        was: state.get(&k).cloned().unwrap_or_default(),
                    });
                    if latest.len() > LATEST {
                        latest.remove(0);
                    }
                }
                state.insert(k.clone(), condition_state(&o.data, condition));
                done.insert(k, now_done);
            }
            Ok(watcher::Event::Delete(o)) => {
                done.remove(&key(&o));
            }
            Err(_) => {}
        }
    }
}

impl Bench {
    async fn new(cp: &'static ControlPlane, timeout: Duration) -> Bench {
        let sent = Sent::default();
        let client = counting_client(cp, &sent).await;
        let discovery = Discovery::new(client.clone())
            .run()
            .await
            .expect("API discovery");
        let mut resources = Vec::new();
        for group in discovery.groups() {
            if group.name() == "bulkhead.dev" {
                continue;
            }
            for (ar, caps) in group.recommended_resources() {
                if caps.supports_operation(verbs::LIST) && ar.plural != "events" {
                    resources.push(ar);
                }
            }
        }
        Bench {
            cp,
            client,
            sent,
            apiserver: apiserver_pid(cp),
            ticks: clock_ticks_per_second(),
            resources,
            run: format!("b{}", unique()),
            timeout,
        }
    }

    async fn mark(&self) -> Mark {
        let own = self.sent.snapshot();
        let req = http::Request::get("/metrics")
            .body(Vec::new())
            .expect("metrics request");
        let text = self
            .client
            .request_text(req)
            .await
            .expect("the apiserver's /metrics");
        let (apiserver, throttled, failed) = parse_request_total(&text);
        Mark {
            apiserver,
            throttled,
            failed,
            own,
            apiserver_ticks: cpu_ticks(self.apiserver).unwrap_or(0),
        }
    }

    fn window(&self, a: &Mark, b: &Mark) -> Window {
        let mut requests = Counts::new();
        let mut apiserver_loops = Counts::new();
        for (k, after) in &b.apiserver {
            if k.is_non_resource() {
                continue;
            }
            let served = after.saturating_sub(a.apiserver.get(k).copied().unwrap_or(0));
            let own = b.own.get(k).copied().unwrap_or(0) - a.own.get(k).copied().unwrap_or(0);
            let n = served.saturating_sub(own);
            if n == 0 {
                continue;
            }
            if k.is_apiserver_loop() {
                apiserver_loops.insert(k.clone(), n);
            } else {
                requests.insert(k.clone(), n);
            }
        }
        let throttled = b
            .throttled
            .iter()
            .filter_map(|(k, n)| {
                let d = n.saturating_sub(a.throttled.get(k).copied().unwrap_or(0));
                (d > 0).then(|| (k.clone(), d))
            })
            .collect();
        Window {
            requests,
            apiserver_loops,
            throttled,
            failed: b.failed - a.failed,
            apiserver_cpu: (b.apiserver_ticks - a.apiserver_ticks) as f64 / self.ticks,
        }
    }

    fn operator_args(extra: &[&'static str]) -> Vec<&'static str> {
        let mut args = vec![
            "--http-addr",
            "127.0.0.1:0",
            "--leader-election=false",
            "--concurrency",
            "4",
        ];
        args.extend_from_slice(extra);
        args
    }

    /// Creates Organization+Environment sets: one unit per set.
    async fn create_sets(&self, bodies: Vec<Value>) -> Vec<Vec<Created>> {
        let created = self.create(bodies).await;
        created.chunks(2).map(<[Created]>::to_vec).collect()
    }

    /// Creates bulkhead objects (8 at a time), in order.
    async fn create(&self, bodies: Vec<Value>) -> Vec<Created> {
        stream::iter(bodies)
            .map(|body| {
                let client = self.client.clone();
                async move {
                    let ar = match body["kind"].as_str() {
                        Some("Organization") => org_ar(),
                        Some("Environment") => env_ar(),
                        _ => dbc_ar(),
                    };
                    let namespace = body
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    let obj: DynamicObject = serde_json::from_value(body).expect("a bench object");
                    let made = api_for(&client, &ar, namespace.as_deref())
                        .create(&PostParams::default(), &obj)
                        .await
                        .expect("create a bench object");
                    Created {
                        ar,
                        namespace,
                        name: made.metadata.name.clone().unwrap_or_default(),
                        uid: made.metadata.uid.clone().expect("a created object's uid"),
                    }
                }
            })
            .buffered(8)
            .collect()
            .await
    }

    /// Starts watches on the targets, then the operator, and waits until
    /// every target object is done or the timeout passes.
    async fn start_and_wait(&self, targets: &[Target], extra: &[&'static str]) -> Started {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut handles = Vec::new();
        let mut synced = Vec::new();
        for t in targets {
            let (tx, rx) = tokio::sync::oneshot::channel();
            handles.push(tokio::spawn(watch_until_done(
                Api::all_with(self.client.clone(), &t.ar),
                t.selector.clone(),
                t.expected,
                done_condition(&t.ar),
                tx,
                deadline,
            )));
            synced.push(rx);
        }
        for rx in synced {
            let _ = tokio::time::timeout(Duration::from_secs(60), rx).await;
        }
        let started = Instant::now();
        let operator = self
            .cp
            .start_operator_as(self.cp.kubeconfig(), &Self::operator_args(extra));
        let mut done = Some(started);
        let mut progress = Vec::new();
        let mut late = Vec::new();
        for (t, h) in targets.iter().zip(handles) {
            let w = h.await.expect("readiness watch");
            progress.push((t.ar.kind.clone(), w.done, t.expected));
            done = match (done, w.at) {
                (Some(d), Some(a)) => Some(d.max(a)),
                _ => None,
            };
            late.extend(w.latest.into_iter().map(|l| (t.ar.kind.clone(), l, true)));
            late.extend(w.waiting.into_iter().map(|l| (t.ar.kind.clone(), l, false)));
        }
        Started {
            operator,
            started,
            done,
            progress,
            late,
        }
    }

    /// SIGTERM, then the CPU time of the exited process (read from its
    /// zombie, before it is reaped) and its peak RSS (read before).
    async fn stop(&self, mut operator: Operator) -> (f64, u64) {
        let pid = operator.pid();
        let rss = peak_rss_kib(pid);
        let mut ticks = cpu_ticks(pid).unwrap_or(0);
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match stat_fields(pid) {
                Some(f) if f.first().map(String::as_str) == Some("Z") => break,
                Some(_) => {}
                None => break,
            }
            ticks = cpu_ticks(pid).unwrap_or(ticks);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ticks = cpu_ticks(pid).unwrap_or(ticks);
        let _ = operator.wait_exit(Duration::from_secs(10));
        drop(operator);
        (ticks as f64 / self.ticks, rss)
    }

    /// An operator phase: the watches, the operator from start to exit.
    async fn operator_phase(&self, targets: &[Target]) -> OperatorRun {
        let before = self.mark().await;
        let s = self.start_and_wait(targets, &[]).await;
        let log = s.operator.log();
        let late = s
            .late
            .iter()
            .map(|(kind, l, done)| describe_late(kind, l, *done, s.started, &log))
            .collect();
        let (cpu, rss_kib) = self.stop(s.operator).await;
        // Watches are counted when they end.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = self.mark().await;
        OperatorRun {
            took: s.done.map(|d| d - s.started),
            progress: s.progress,
            late,
            rss_kib,
            cpu,
            window: self.window(&before, &after),
        }
    }

    /// Every object labelled managed-by=bulkhead, with its resource.
    async fn managed(&self) -> Vec<(ApiResource, Value)> {
        let lp = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
        let mut out = Vec::new();
        for ar in &self.resources {
            let Ok(list) = Api::<DynamicObject>::all_with(self.client.clone(), ar)
                .list(&lp)
                .await
            else {
                continue;
            };
            for item in list.items {
                out.push((
                    ar.clone(),
                    serde_json::to_value(item).unwrap_or(Value::Null),
                ));
            }
        }
        out
    }

    /// The bench's bulkhead objects of one run label, live.
    async fn bulkhead_objects(&self, run: &str) -> Vec<(ApiResource, Value)> {
        let lp = ListParams::default().labels(&format!("{BENCH_LABEL}={run}"));
        let mut out = Vec::new();
        for ar in [org_ar(), env_ar(), dbc_ar()] {
            let list = Api::<DynamicObject>::all_with(self.client.clone(), &ar)
                .list(&lp)
                .await
                .expect("list the bench's bulkhead objects");
            for item in list.items {
                out.push((
                    ar.clone(),
                    serde_json::to_value(item).unwrap_or(Value::Null),
                ));
            }
        }
        out
    }

    /// After an operator phase: per unit, what the operator wrote (children
    /// and one status per bulkhead object) when all of the unit's objects
    /// are done, and the resources of its children; plus the cache count.
    async fn templates(
        &self,
        units: &[Vec<Created>],
        run: &str,
    ) -> (Vec<Option<Vec<Template>>>, Vec<ApiResource>, usize) {
        let managed = self.managed().await;
        let bulkhead = self.bulkhead_objects(run).await;
        let cached = managed.len() + bulkhead.len();
        let mut unit_of: HashMap<&str, usize> = HashMap::new();
        for (i, u) in units.iter().enumerate() {
            for c in u {
                unit_of.insert(c.uid.as_str(), i);
            }
        }
        let mut children: Vec<Vec<Template>> = vec![Vec::new(); units.len()];
        let mut kinds: Vec<ApiResource> = Vec::new();
        for (ar, live) in &managed {
            let owners = live
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|o| o["uid"].as_str());
            let label = live
                .pointer("/metadata/labels")
                .and_then(|l| l.get(LABEL_OWNER_UID))
                .and_then(Value::as_str);
            let Some(unit) = owners
                .chain(label)
                .find_map(|uid| unit_of.get(uid).copied())
            else {
                continue;
            };
            children[unit].push(child_template(ar, live));
            if !kinds.iter().any(|k| k == ar) {
                kinds.push(ar.clone());
            }
        }
        let by_uid: HashMap<&str, (&ApiResource, &Value)> = bulkhead
            .iter()
            .filter_map(|(ar, v)| Some((v.pointer("/metadata/uid")?.as_str()?, (ar, v))))
            .collect();
        let mut out = Vec::new();
        for (u, mut kids) in units.iter().zip(children) {
            let complete = !kids.is_empty()
                && u.iter().all(|c| {
                    by_uid
                        .get(c.uid.as_str())
                        .is_some_and(|(ar, v)| condition_true(v, done_condition(ar)))
                });
            if complete {
                for c in u {
                    let (ar, v) = by_uid[c.uid.as_str()];
                    kids.push(status_template(ar, v));
                }
                out.push(Some(kids));
            } else {
                out.push(None);
            }
        }
        (out, kinds, cached)
    }

    /// The baseline's writes for its units: unit i as the operator wrote
    /// unit i (or, when that one did not finish, the first unit that did).
    /// Returns the writes and how many units had to borrow.
    fn plan(
        op: &[Vec<Created>],
        templates: &[Option<Vec<Template>>],
        baseline: &[Vec<Created>],
        tokens: &[(String, String)],
        global: &[(String, String)],
    ) -> Option<(Vec<Template>, usize)> {
        let first = templates.iter().position(Option::is_some)?;
        let mut out = Vec::new();
        let mut fallbacks = 0;
        for (i, bl) in baseline.iter().enumerate() {
            let src = if templates[i].is_some() {
                i
            } else {
                fallbacks += 1;
                first
            };
            let mut token_list = vec![(tokens[src].0.clone(), tokens[i].1.clone())];
            token_list.extend_from_slice(global);
            let renames = Renames {
                uids: op[src]
                    .iter()
                    .zip(bl)
                    .map(|(o, b)| (o.uid.clone(), b.uid.clone()))
                    .collect(),
                tokens: token_list,
            };
            for t in templates[src].iter().flatten() {
                out.push(renames.template(t));
            }
        }
        Some((out, fallbacks))
    }

    /// Writes `plan` with one client, 4 requests in flight: namespaces
    /// first, then every other child and the status writes.
    async fn apply(client: &Client, plan: &[Template]) -> Applied {
        let (namespaces, rest): (Vec<&Template>, Vec<&Template>) =
            plan.iter().partition(|t| t.is_namespace());
        let mut applied = Applied::default();
        for stage in [namespaces, rest] {
            let started = Instant::now();
            let results: Vec<(String, Duration, Option<String>)> = stream::iter(stage)
                .map(|t| {
                    let client = client.clone();
                    async move {
                        let api = api_for(&client, &t.ar, t.namespace.as_deref());
                        let pp = PatchParams::apply(BASELINE_MANAGER).force();
                        let sent = Instant::now();
                        let result = if t.status {
                            api.patch_status(&t.name, &pp, &Patch::Apply(&t.body)).await
                        } else {
                            api.patch(&t.name, &pp, &Patch::Apply(&t.body)).await
                        };
                        let what = if t.status {
                            format!("{} status", t.ar.kind)
                        } else {
                            t.ar.kind.clone()
                        };
                        let error = result.err().map(|e| format!("{what} {}: {e}", t.name));
                        (what, sent.elapsed(), error)
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            applied.stages.push(started.elapsed());
            for (what, took, error) in results {
                let e = applied.latency.entry(what).or_default();
                e.0 += 1;
                e.1 += took;
                applied.errors.extend(error);
            }
        }
        applied
    }

    async fn baseline_phase(&self, plan: &[Template]) -> BaselineRun {
        let sent = Sent::default();
        let client = counting_client(self.cp, &sent).await;
        let before = self.mark().await;
        let started = Instant::now();
        let applied = Self::apply(&client, plan).await;
        let took = started.elapsed();
        let after = self.mark().await;
        BaselineRun {
            took,
            stages: applied.stages,
            latency: applied.latency,
            window: self.window(&before, &after),
            client: sent.snapshot(),
            errors: applied.errors,
        }
    }

    fn start_deleters(&self) -> Deleters {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cp.dir().join("logs").join("bench-deleters.log"))
            .expect("deleters log");
        let child = Command::new(self.cp.bin().join("kube-controller-manager"))
            .arg(format!("--kubeconfig={}", self.cp.kubeconfig().display()))
            .args([
                "--secure-port=0",
                "--leader-elect=false",
                "--controllers=namespace,garbagecollector",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                "--concurrent-namespace-syncs=20",
                "--concurrent-gc-syncs=40",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start kube-controller-manager (the control plane's binaries)");
        watchdog(child.id());
        Deleters(child)
    }

    /// Deletes the bench's objects of `run` (finalizers dropped: the
    /// operator is stopped) and waits until they and every child owned by
    /// them (of `kinds`) are gone.
    async fn cleanup(&self, run: &str, units: &[Vec<Created>], kinds: &[ApiResource]) {
        let deleters = self.start_deleters();
        let all: Vec<&Created> = units.iter().flatten().collect();
        stream::iter(all.iter().copied())
            .map(|c| {
                let api = api_for(&self.client, &c.ar, c.namespace.as_deref());
                async move {
                    let _ = api
                        .patch(
                            &c.name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
                        )
                        .await;
                    let _ = api.delete(&c.name, &DeleteParams::background()).await;
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        let uids: HashSet<&str> = all.iter().map(|c| c.uid.as_str()).collect();
        let lp = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let mut left = self.bulkhead_objects(run).await.len();
            for ar in kinds {
                if let Ok(list) = Api::<DynamicObject>::all_with(self.client.clone(), ar)
                    .list(&lp)
                    .await
                {
                    left += list
                        .items
                        .iter()
                        .filter(|o| {
                            o.metadata
                                .owner_references
                                .iter()
                                .flatten()
                                .any(|r| uids.contains(r.uid.as_str()))
                                || o.metadata
                                    .labels
                                    .as_ref()
                                    .and_then(|l| l.get(LABEL_OWNER_UID))
                                    .is_some_and(|u| uids.contains(u.as_str()))
                        })
                        .count();
                }
            }
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("scale: {left} objects of {run} still there after 15 min; going on");
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        drop(deleters);
        // Its watches are counted when they end: before the next phase.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    fn set_name(&self, phase: &str, side: &str, i: usize) -> String {
        format!("{}{phase}-{side}-{i:05}", self.run)
    }

    fn set_bodies(&self, phase: &str, side: &str, n: usize) -> (String, Vec<Value>) {
        let run = format!("{}{phase}-{side}", self.run);
        let mut bodies = Vec::new();
        for i in 0..n {
            let name = self.set_name(phase, side, i);
            bodies.push(organization(&name, &run));
            bodies.push(environment(&name, &name, &run));
        }
        (run, bodies)
    }

    fn set_targets(run: &str, n: usize) -> Vec<Target> {
        [org_ar(), env_ar()]
            .into_iter()
            .map(|ar| Target {
                ar,
                selector: format!("{BENCH_LABEL}={run}"),
                expected: n,
            })
            .collect()
    }

    /// N Organization+Environment sets: the operator, then the baseline.
    async fn sets(&self, n: usize) -> Compared {
        let phase = format!("s{n}");
        eprintln!("scale: {n} sets: operator");
        let (op_run, bodies) = self.set_bodies(&phase, "op", n);
        let op_units: Vec<Vec<Created>> = self.create_sets(bodies).await;
        let op = self.operator_phase(&Self::set_targets(&op_run, n)).await;
        let (templates, kinds, cached) = self.templates(&op_units, &op_run).await;
        let objects = templates.iter().flatten().map(Vec::len).sum::<usize>();
        self.cleanup(&op_run, &op_units, &kinds).await;

        eprintln!("scale: {n} sets: baseline");
        let (bl_run, bodies) = self.set_bodies(&phase, "bl", n);
        let bl_units: Vec<Vec<Created>> = self.create_sets(bodies).await;
        let tokens: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    self.set_name(&phase, "op", i),
                    self.set_name(&phase, "bl", i),
                )
            })
            .collect();
        let planned = Self::plan(&op_units, &templates, &bl_units, &tokens, &[]);
        let compared = self.compare(n, op, planned, objects, cached).await;
        self.cleanup(&bl_run, &bl_units, &kinds).await;
        compared
    }

    /// The operator's run against the baseline replaying `planned` (none
    /// when nothing could be planned). Objects per run come from the plan:
    /// the baseline's count is complete even when the operator did not
    /// finish.
    async fn compare(
        &self,
        n: usize,
        op: OperatorRun,
        planned: Option<(Vec<Template>, usize)>,
        objects: usize,
        cached: usize,
    ) -> Compared {
        let (baseline, fallbacks, objects) = match planned {
            Some((plan, fallbacks)) => (
                Some(self.baseline_phase(&plan).await),
                fallbacks,
                plan.len(),
            ),
            None => (None, 0, objects),
        };
        Compared {
            n,
            objects,
            cached,
            op,
            baseline,
            fallbacks,
        }
    }

    /// N DatabaseClusters in one Environment of a kubernetes-provider
    /// Organization: the operator (the Environment Ready beforehand), then
    /// the baseline (the Environment's children and status written
    /// beforehand, untimed).
    async fn databases(&self, n: usize) -> Compared {
        let phase = format!("d{n}");
        eprintln!("scale: {n} DatabaseClusters: operator");
        let env_name = |side: &str| self.set_name(&phase, side, 0);
        let db_name = |i: usize| format!("db-{i:05}");
        let (op_run, set) = self.set_bodies(&phase, "op", 1);
        let op_set = self.create(set).await;
        // The Environment made Ready first, by an operator that then stops.
        let ready = self
            .start_and_wait(&Self::set_targets(&op_run, 1), &[])
            .await;
        self.stop(ready.operator).await;
        assert!(
            ready.done.is_some(),
            "the DatabaseClusters' Environment never became Ready"
        );
        let env_op = env_name("op");
        let dbs = (0..n).map(|i| database_cluster(&db_name(i), &env_op, &op_run));
        let mut op_units = vec![op_set];
        op_units.extend(
            self.create(dbs.collect())
                .await
                .into_iter()
                .map(|c| vec![c]),
        );
        let op = self
            .operator_phase(&[Target {
                ar: dbc_ar(),
                selector: format!("{BENCH_LABEL}={op_run}"),
                expected: n,
            }])
            .await;
        let (templates, kinds, cached) = self.templates(&op_units, &op_run).await;
        let objects = templates[1..].iter().flatten().map(Vec::len).sum::<usize>();
        self.cleanup(&op_run, &op_units, &kinds).await;

        eprintln!("scale: {n} DatabaseClusters: baseline");
        let (bl_run, set) = self.set_bodies(&phase, "bl", 1);
        let bl_set = self.create(set).await;
        let global = vec![(env_op.clone(), env_name("bl"))];
        let Some((env_plan, _)) = Self::plan(
            &op_units[..1],
            &templates[..1],
            std::slice::from_ref(&bl_set),
            &[(env_op.clone(), env_name("bl"))],
            &[],
        ) else {
            panic!("the DatabaseClusters' Environment has no children to copy");
        };
        let setup = counting_client(self.cp, &Sent::default()).await;
        let errors = Self::apply(&setup, &env_plan).await.errors;
        assert!(errors.is_empty(), "baseline Environment: {errors:?}");
        let dbs = (0..n).map(|i| database_cluster(&db_name(i), &env_name("bl"), &bl_run));
        let mut bl_units = vec![bl_set];
        bl_units.extend(
            self.create(dbs.collect())
                .await
                .into_iter()
                .map(|c| vec![c]),
        );
        let tokens: Vec<(String, String)> = (0..n).map(|i| (db_name(i), db_name(i))).collect();
        let planned = Self::plan(
            &op_units[1..],
            &templates[1..],
            &bl_units[1..],
            &tokens,
            &global,
        );
        let compared = self.compare(n, op, planned, objects, cached).await;
        self.cleanup(&bl_run, &bl_units, &kinds).await;
        compared
    }

    /// N sets Ready under an operator at --resync-seconds 60, then a window
    /// of `seconds` in which nothing changes.
    async fn steady(&self, n: usize, seconds: u64) -> Steady {
        eprintln!("scale: steady state, {n} sets, {seconds} s");
        let (run, bodies) = self.set_bodies("st", "op", n);
        let units: Vec<Vec<Created>> = self.create_sets(bodies).await;
        let s = self
            .start_and_wait(
                &Self::set_targets(&run, n),
                &["--resync-seconds", RESYNC_STEADY],
            )
            .await;
        // Let what convergence set off (requeues after status writes) end.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let pid = s.operator.pid();
        let before = self.mark().await;
        let cpu0 = cpu_ticks(pid).unwrap_or(0);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let cpu1 = cpu_ticks(pid).unwrap_or(0);
        let after = self.mark().await;
        let elapsed = t0.elapsed().as_secs_f64();
        self.stop(s.operator).await;
        let (templates, kinds, _) = self.templates(&units, &run).await;
        let objects = templates.iter().flatten().map(Vec::len).sum::<usize>();
        self.cleanup(&run, &units, &kinds).await;
        Steady {
            sets: n,
            objects,
            seconds: elapsed,
            resyncs: elapsed / resync_seconds(),
            window: self.window(&before, &after),
            operator_cpu: cpu1.saturating_sub(cpu0) as f64 / self.ticks,
            converged: s.done.is_some(),
        }
    }
}

// ------------------------------------------------------------ reporting

/// One late (or never done) object: when it became done, what its
/// condition said before, and the operator's last log lines naming it.
fn describe_late(kind: &str, l: &Late, done: bool, started: Instant, log: &str) -> String {
    let name = l.key.rsplit('/').next().unwrap_or(&l.key);
    let mentions: Vec<&str> = log.lines().filter(|line| line.contains(name)).collect();
    let tail = &mentions[mentions.len().saturating_sub(4)..];
    let when = if done {
        format!("done at {}", secs(l.at.saturating_duration_since(started)))
    } else {
        "never done".to_string()
    };
    let mut out = format!("{kind} {} {when}; before: {}", l.key, l.was);
    for line in tail {
        out.push_str("\n      log: ");
        out.push_str(line);
    }
    out
}

fn resync_seconds() -> f64 {
    RESYNC_STEADY.parse().unwrap_or(60.0)
}

fn per(n: u64, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// "N writes (x/object), N reads (x/object)": the same wording for the
/// operator's and the baseline's traffic so the two lines compare at a glance.
fn traffic(writes: u64, reads: u64, objects: usize) -> String {
    format!(
        "{writes} writes ({:.2}/object), {reads} reads ({:.2}/object)",
        per(writes, objects),
        per(reads, objects)
    )
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn operator_time(op: &OperatorRun, timeout: Duration) -> String {
    match op.took {
        Some(t) => secs(t),
        None => {
            let progress: Vec<String> = op
                .progress
                .iter()
                .map(|(k, done, of)| format!("{done} of {of} {k}s"))
                .collect();
            format!("> {} ({} done)", secs(timeout), progress.join(", "))
        }
    }
}

/// The apiserver's own requests left out of a window, if any.
fn apiserver_loops(w: &Window) -> String {
    listed(&w.apiserver_loops)
        .map(|l| format!("  left out as the apiserver's own: {l}\n"))
        .unwrap_or_default()
}

/// The 429s of a window, if any.
fn throttled(w: &Window) -> String {
    listed(&w.throttled)
        .map(|l| format!("; throttled (429, retried): {l}"))
        .unwrap_or_default()
}

/// "N verb resource, …", or `None` for no requests.
fn listed(counts: &Counts) -> Option<String> {
    let list: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{n} {}", k.describe()))
        .collect();
    (!list.is_empty()).then(|| list.join(", "))
}

fn top_pairs(w: &Window, limit: usize) -> Vec<String> {
    let mut pairs: Vec<(&Key, &u64)> = w.requests.iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    pairs
        .into_iter()
        .take(limit)
        .map(|(k, n)| format!("{n} {}", k.describe()))
        .collect()
}

struct Row {
    label: String,
    operator: String,
    baseline: String,
    ratio: String,
    per_unit: String,
    rss: String,
    cached: String,
    writes: String,
    reads: String,
    operator_cpu: String,
    apiserver_cpu: String,
    apiserver_ratio: String,
}

fn report(what: &str, unit: &str, c: &Compared, timeout: Duration) -> Row {
    let op = &c.op;
    let ot = op.window.totals();
    println!();
    println!("## {} {what}", c.n);
    println!(
        "operator: {}{}, peak RSS {} MiB, CPU {:.1} s; apiserver CPU {:.1} s",
        match op.took {
            Some(t) => secs(t),
            None => format!("not done within {}", secs(timeout)),
        },
        op.took
            .map(|t| format!(
                " ({:.1} ms per {unit})",
                t.as_secs_f64() * 1000.0 / c.n as f64
            ))
            .unwrap_or_default(),
        op.rss_kib / 1024,
        op.cpu,
        op.window.apiserver_cpu
    );
    for (kind, done, of) in &op.progress {
        if done < of {
            println!("  only {done} of {of} {kind}s done");
        }
    }
    println!(
        "  {}, {} watches; {} failed (5xx){}",
        traffic(ot.writes, ot.reads, c.objects),
        ot.watches,
        op.window.failed,
        throttled(&op.window)
    );
    println!("  most: {}", top_pairs(&op.window, 8).join(", "));
    for late in &op.late {
        println!("  last: {late}");
    }
    print!("{}", apiserver_loops(&op.window));
    println!(
        "objects: {} ({:.1} per {unit}: children and bulkhead objects); operator caches {} objects",
        c.objects,
        c.objects as f64 / c.n as f64,
        c.cached
    );
    let mut row = Row {
        label: c.n.to_string(),
        operator: operator_time(op, timeout),
        baseline: "n/a".into(),
        ratio: "n/a".into(),
        per_unit: op
            .took
            .map(|t| format!("{:.0} ms", t.as_secs_f64() * 1000.0 / c.n as f64))
            .unwrap_or_else(|| "n/a".into()),
        rss: format!("{} MiB", op.rss_kib / 1024),
        cached: c.cached.to_string(),
        writes: format!("{:.2} / n/a", per(ot.writes, c.objects)),
        reads: format!("{:.2} / n/a", per(ot.reads, c.objects)),
        operator_cpu: format!("{:.1} s", op.cpu),
        apiserver_cpu: format!("{:.1} / n/a s", op.window.apiserver_cpu),
        apiserver_ratio: "n/a".into(),
    };
    let Some(b) = &c.baseline else {
        println!("baseline: not run (the operator finished no {unit} to copy)");
        return row;
    };
    let bt = b.window.totals();
    let ct = totals(&b.client);
    println!(
        "baseline: {} ({:.1} ms per {unit}); apiserver CPU {:.1} s{}",
        secs(b.took),
        b.took.as_secs_f64() * 1000.0 / c.n as f64,
        b.window.apiserver_cpu,
        if c.fallbacks > 0 {
            format!(
                " ({} {unit}s copied from a finished one: the operator did not finish them)",
                c.fallbacks
            )
        } else {
            String::new()
        }
    );
    println!(
        "  {}; the baseline client sent {} writes, {} reads{}",
        traffic(bt.writes, bt.reads, c.objects),
        ct.writes,
        ct.reads,
        if bt.writes == ct.writes && bt.reads == ct.reads {
            " (accounting matches)"
        } else {
            " (ACCOUNTING MISMATCH)"
        }
    );
    let latency: Vec<String> = b
        .latency
        .iter()
        .map(|(kind, (n, total))| {
            format!(
                "{kind} {:.1} ms",
                total.as_secs_f64() * 1000.0 / f64::from((*n).max(1))
            )
        })
        .collect();
    println!(
        "  namespaces {}, the rest {}; mean latency: {}{}",
        b.stages.first().map(|d| secs(*d)).unwrap_or_default(),
        b.stages.get(1).map(|d| secs(*d)).unwrap_or_default(),
        latency.join(", "),
        throttled(&b.window)
    );
    if !b.errors.is_empty() {
        println!(
            "  {} baseline writes FAILED, e.g. {}",
            b.errors.len(),
            b.errors[0]
        );
    }
    let ratio = op
        .took
        .map(|t| t.as_secs_f64() / b.took.as_secs_f64().max(1e-9));
    let cpu_ratio = op.window.apiserver_cpu / b.window.apiserver_cpu.max(1e-9);
    println!(
        "ratio: {}; apiserver CPU per {unit}: {:.3} s vs {:.3} s ({cpu_ratio:.1}x)",
        ratio
            .map(|r| format!("{r:.1}x"))
            .unwrap_or_else(|| format!("> {:.1}x", timeout.as_secs_f64() / b.took.as_secs_f64())),
        op.window.apiserver_cpu / c.n as f64,
        b.window.apiserver_cpu / c.n as f64,
    );
    row.baseline = secs(b.took);
    row.ratio = ratio
        .map(|r| format!("{r:.1}×"))
        .unwrap_or_else(|| format!("> {:.1}×", timeout.as_secs_f64() / b.took.as_secs_f64()));
    row.writes = format!(
        "{:.2} / {:.2}",
        per(ot.writes, c.objects),
        per(bt.writes, c.objects)
    );
    row.reads = format!(
        "{:.2} / {:.2}",
        per(ot.reads, c.objects),
        per(bt.reads, c.objects)
    );
    row.apiserver_cpu = format!(
        "{:.1} / {:.1} s",
        op.window.apiserver_cpu, b.window.apiserver_cpu
    );
    row.apiserver_ratio = format!("{cpu_ratio:.1}×");
    row
}

fn report_steady(s: &Steady) {
    let t = s.window.totals();
    let per_resync = |n: u64| per(n, s.objects) / s.resyncs.max(1e-9);
    println!();
    println!(
        "## steady state: {} sets Ready, --resync-seconds {RESYNC_STEADY}, {:.0} s window ({:.1} resyncs){}",
        s.sets,
        s.seconds,
        s.resyncs,
        if s.converged {
            ""
        } else {
            " — NOT all Ready when the window began"
        }
    );
    println!(
        "  {} writes ({:.3}/object/resync), {} reads ({:.3}/object/resync), {} watches, over {} objects; operator CPU {:.1} s, apiserver CPU {:.1} s",
        t.writes,
        per_resync(t.writes),
        t.reads,
        per_resync(t.reads),
        t.watches,
        s.objects,
        s.operator_cpu,
        s.window.apiserver_cpu
    );
    print!("{}", apiserver_loops(&s.window));
    if t.watches > 0 {
        println!(
            "  (watches are counted when they end; these include the apiserver's own informers re-watching, so they are an upper bound for the operator)"
        );
    }
    if t.writes + t.reads == 0 {
        println!("  no writes and no reads besides the watches: nothing to fix");
    }
    for line in top_pairs(&s.window, usize::MAX) {
        println!("  {line}");
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: skipped (run with `cargo bench --bench scale`)");
        return;
    }
    let sets: Vec<usize> = std::env::var("BULKHEAD_BENCH_SETS")
        .unwrap_or_else(|_| "100,300,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let databases = env_usize("BULKHEAD_BENCH_DATABASES")
        .unwrap_or_else(|| sets.iter().copied().min().unwrap_or(100));
    let steady_sets = env_usize("BULKHEAD_BENCH_STEADY_SETS").unwrap_or(100);
    let steady_seconds = env_usize("BULKHEAD_BENCH_STEADY_SECONDS").unwrap_or(180) as u64;
    let timeout =
        Duration::from_secs(env_usize("BULKHEAD_BENCH_TIMEOUT_SECONDS").unwrap_or(1800) as u64);

    let cp = ControlPlane::apiserver();
    cp.install_crds();
    cp.install_cnpg_crds();
    let bench = Bench::new(cp, timeout).await;

    // What an idle apiserver serves by itself.
    let before = bench.mark().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = bench.mark().await;
    let idle = bench.window(&before, &after);
    if !idle.requests.is_empty() {
        eprintln!(
            "scale: WARNING: the idle apiserver served requests that will be counted: {}",
            top_pairs(&idle, 10).join(", ")
        );
    }

    let mut set_rows = Vec::new();
    let mut compared = Vec::new();
    for n in &sets {
        compared.push(bench.sets(*n).await);
    }
    let db = if databases > 0 {
        Some(bench.databases(databases).await)
    } else {
        None
    };
    let steady = if steady_seconds > 0 {
        Some(bench.steady(steady_sets, steady_seconds).await)
    } else {
        None
    };

    println!(
        "# bulkhead scale benchmark (local control plane: etcd + kube-apiserver, {} CPUs; operator --concurrency 4; baseline: one client, {IN_FLIGHT} requests in flight)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for c in &compared {
        set_rows.push(report("Organization+Environment sets", "set", c, timeout));
    }
    let db_row = db
        .as_ref()
        .map(|c| report("DatabaseClusters", "DatabaseCluster", c, timeout));
    if let Some(s) = &steady {
        report_steady(s);
    }

    println!();
    let header = |first: &str, per: &str| {
        println!(
            "| {first} | operator | baseline | ratio | time per {per} | operator peak RSS | cached objects | writes/object (operator / baseline) | reads/object (operator / baseline) | operator CPU | apiserver CPU (operator / baseline) | apiserver CPU per {per}, operator/baseline |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    };
    let line = |r: &Row| {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.operator,
            r.baseline,
            r.ratio,
            r.per_unit,
            r.rss,
            r.cached,
            r.writes,
            r.reads,
            r.operator_cpu,
            r.apiserver_cpu,
            r.apiserver_ratio
        )
    };
    if !set_rows.is_empty() {
        header("sets", "set");
        set_rows.iter().for_each(line);
    }
    if let Some(r) = &db_row {
        println!();
        header("DatabaseClusters", "DatabaseCluster");
        line(r);
    }
    if let Some(s) = &steady {
        let t = s.window.totals();
        println!();
        println!(
            "| steady state | window | writes/object/resync | reads/object/resync | watches | operator CPU | apiserver CPU |"
        );
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {} sets, --resync-seconds {RESYNC_STEADY} | {:.0} s | {:.3} ({}) | {:.3} ({}) | {} | {:.1} s | {:.1} s |",
            s.sets,
            s.seconds,
            per(t.writes, s.objects) / s.resyncs.max(1e-9),
            t.writes,
            per(t.reads, s.objects) / s.resyncs.max(1e-9),
            t.reads,
            t.watches,
            s.operator_cpu,
            s.window.apiserver_cpu
        );
    }
}
