//! Prometheus metrics (prometheus-client), served on `/metrics` by `bulkhead run`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube::Resource;
use kube::runtime::reflector::Store;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::reconcile::ReconcileError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub category: String,
    pub reason: String,
}

/// One kind of request to the apiserver: `verb` as the apiserver's own
/// `apiserver_request_total` names it (get, list, watch, create, patch,
/// update, delete), `resource` the plural, with `/status` etc. appended for
/// a subresource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub kind: String,
    pub condition: String,
    pub status: String,
    pub reason: String,
}

/// One controller's cache, read at scrape time: (condition, status,
/// reason) of each object's conditions.
type ConditionSource = Box<dyn Fn() -> Vec<(String, String, String)> + Send + Sync>;

/// Every series bulkhead exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Per kind, the cache `objects` is counted from at each scrape.
    condition_sources: Mutex<Vec<(String, ConditionSource)>>,
    pub objects: Family<ObjectLabels, Gauge>,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub in_flight: Family<KindLabels, Gauge>,
    pub leader: Gauge,
    pub apiserver_requests: Family<RequestLabels, Counter>,
    pub cached_children: Gauge,
    /// Read into `cached_children` at each scrape.
    cache_size: Mutex<Option<Box<dyn Fn() -> usize + Send + Sync>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulkhead");
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let in_flight = Family::<KindLabels, Gauge>::default();
        let leader = Gauge::default();
        let objects = Family::<ObjectLabels, Gauge>::default();
        let apiserver_requests = Family::<RequestLabels, Counter>::default();
        let cached_children = Gauge::default();
        registry.register(
            "apiserver_requests",
            "Requests this process sent to the apiserver, per verb and resource (a watch counts once, when opened)",
            apiserver_requests.clone(),
        );
        registry.register(
            "cached_children",
            "Child objects held by the operator's child cache",
            cached_children.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles started, per kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, per kind, category and reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, per kind",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, per kind",
            in_flight.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "objects",
            "Objects per kind, condition, status and reason, from the controllers' caches",
            objects.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            condition_sources: Mutex::new(Vec::new()),
            objects,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            in_flight,
            leader,
            apiserver_requests,
            cached_children,
            cache_size: Mutex::new(None),
        }
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let labels = KindLabels {
            kind: self.kind.to_string(),
        };
        self.metrics
            .reconcile_duration
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.get_or_create(&labels).dec();
    }
}

impl Metrics {
    pub fn reconcile_started(&self, kind: &'static str) -> ReconcileTimer<'_> {
        let labels = KindLabels {
            kind: kind.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.in_flight.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    pub fn reconcile_error(&self, kind: &str, error: &ReconcileError) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
                category: error.category().as_str().to_string(),
                reason: error.reason().to_string(),
            })
            .inc();
    }

    /// Counts the objects of `store` by condition in `bulkhead_objects` at
    /// every scrape. Read from the cache the controller already keeps, so
    /// scraping costs no API request, and it is right even for objects
    /// that have not been reconciled since the process started.
    pub fn count_conditions<K>(&self, store: Store<K>)
    where
        K: Resource<DynamicType = ()> + serde::Serialize + Clone + Send + Sync + 'static,
    {
        let source: ConditionSource = Box::new(move || {
            store
                .state()
                .iter()
                .flat_map(|obj: &Arc<K>| conditions_of(obj.as_ref()))
                .collect()
        });
        self.condition_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((K::kind(&()).into_owned(), source));
    }

    /// Reports `size()` as `bulkhead_cached_children` at every scrape.
    pub fn count_cached_children(&self, size: impl Fn() -> usize + Send + Sync + 'static) {
        *self.cache_size.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(size));
    }

    /// Counts one request by its method and path.
    pub fn apiserver_request(&self, method: &http::Method, uri: &http::Uri) {
        let (verb, resource) = request_kind(method, uri);
        self.apiserver_requests
            .get_or_create(&RequestLabels { verb, resource })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        if let Some(size) = self
            .cache_size
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            self.cached_children
                .set(i64::try_from(size()).unwrap_or(i64::MAX));
        }
        // Held until encoded, so two scrapes at once cannot see each
        // other's half-counted objects.
        let sources = self
            .condition_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Cleared first, so a condition no object has any more disappears
        // instead of keeping its last count.
        self.objects.clear();
        for (kind, source) in sources.iter() {
            for (condition, status, reason) in source() {
                self.objects
                    .get_or_create(&ObjectLabels {
                        kind: kind.clone(),
                        condition,
                        status,
                        reason,
                    })
                    .inc();
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The apiserver's verb and resource of a request, from its method and path
/// (`/api/v1/namespaces/ns/configmaps/name` → `get`, `configmaps`).
fn request_kind(method: &http::Method, uri: &http::Uri) -> (String, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // Past `/api/v1` or `/apis/<group>/<version>`.
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, resource, tail @ ..] => {
            let mut v = vec![*resource];
            v.extend_from_slice(tail);
            v
        }
        other => other.to_vec(),
    };
    let resource = match rest.as_slice() {
        [] => "other".to_string(),
        [resource] | [resource, _] => resource.to_string(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
    };
    // A non-resource path (`/version`) is a get, as the apiserver counts it.
    let named = rest.len() >= 2 || rest.is_empty();
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PATCH => "patch",
        http::Method::PUT => "update",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    (verb.to_string(), resource)
}

/// A tower layer for the kube client that counts every request in
/// `bulkhead_apiserver_requests_total`.
pub fn count_requests(
    metrics: Arc<Metrics>,
) -> tower::util::MapRequestLayer<
    impl Fn(http::Request<kube::client::Body>) -> http::Request<kube::client::Body> + Clone,
> {
    tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        metrics.apiserver_request(request.method(), request.uri());
        request
    })
}

/// `(type, status, reason)` of each entry of `status.conditions`, read
/// through the object's JSON form: every kind keeps them there.
fn conditions_of<K: serde::Serialize>(obj: &K) -> Vec<(String, String, String)> {
    let Ok(value) = serde_json::to_value(obj) else {
        return Vec::new();
    };
    let field = |c: &serde_json::Value, key: &str| c[key].as_str().unwrap_or_default().to_string();
    value["status"]["conditions"]
        .as_array()
        .map(|conditions| {
            conditions
                .iter()
                .map(|c| (field(c, "type"), field(c, "status"), field(c, "reason")))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_as_the_apiserver_names_them() {
        let cases = [
            (
                "GET",
                "/api/v1/namespaces/ns/configmaps/cfg",
                "get",
                "configmaps",
            ),
            (
                "GET",
                "/api/v1/namespaces/ns/configmaps?labelSelector=a",
                "list",
                "configmaps",
            ),
            (
                "GET",
                "/api/v1/namespaces?watch=true&resourceVersion=1",
                "watch",
                "namespaces",
            ),
            ("GET", "/api/v1/namespaces/staging", "get", "namespaces"),
            (
                "PATCH",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/x?fieldManager=b",
                "patch",
                "clusterroles",
            ),
            (
                "PATCH",
                "/apis/bulkhead.dev/v1alpha1/environments/e/status",
                "patch",
                "environments/status",
            ),
            (
                "PATCH",
                "/apis/bulkhead.dev/v1alpha1/namespaces/ns/databaseclusters/d/status",
                "patch",
                "databaseclusters/status",
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/ns/events",
                "create",
                "events",
            ),
            (
                "DELETE",
                "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/np",
                "delete",
                "networkpolicies",
            ),
            ("GET", "/version", "get", "other"),
        ];
        for (method, uri, verb, resource) in cases {
            let method: http::Method = method.parse().expect("method");
            let uri: http::Uri = uri.parse().expect("uri");
            let got = request_kind(&method, &uri);
            assert_eq!(
                got,
                (verb.to_string(), resource.to_string()),
                "{method} {uri}"
            );
        }
    }
    use crate::api::Organization;
    use kube::runtime::{reflector, watcher};

    fn org(name: &str, ready: &str, reason: &str) -> Organization {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "bulkhead.dev/v1alpha1",
            "kind": "Organization",
            "metadata": {"name": name},
            "spec": {"members": []},
            "status": {"conditions": [{
                "type": "Ready", "status": ready, "reason": reason, "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }]},
        }))
        .expect("an Organization")
    }

    #[test]
    fn objects_are_counted_by_condition_from_the_cache_at_each_scrape() {
        let metrics = Metrics::default();
        let (store, mut writer) = reflector::store::<Organization>();
        metrics.count_conditions(store);
        writer.apply_watcher_event(&watcher::Event::Apply(org("a", "True", "Available")));
        writer.apply_watcher_event(&watcher::Event::Apply(org("b", "True", "Available")));
        writer.apply_watcher_event(&watcher::Event::Apply(org("c", "False", "SlugConflict")));
        let text = metrics.encode();
        assert!(
            text.contains(r#"bulkhead_objects{kind="Organization",condition="Ready",status="True",reason="Available"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bulkhead_objects{kind="Organization",condition="Ready",status="False",reason="SlugConflict"} 1"#),
            "{text}"
        );

        // A condition no object has any more is gone, not stuck at its
        // last count.
        writer.apply_watcher_event(&watcher::Event::Apply(org("c", "True", "Available")));
        let text = metrics.encode();
        assert!(!text.contains("SlugConflict"), "{text}");
        assert!(text.contains(r#"reason="Available"} 3"#), "{text}");
    }
}
