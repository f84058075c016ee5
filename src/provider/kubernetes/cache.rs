//! The children bulkhead manages, as its watches last saw them.
//!
//! One kube-runtime watcher per child kind (label-selected on
//! `app.kubernetes.io/managed-by=bulkhead`, except Namespaces, which are
//! watched whole because an Environment must see namespaces it did not
//! create), so a reconcile reads its children from memory instead of a GET
//! per child and a LIST per kind. Three things sit beside each store:
//!
//! - an index from the `bulkhead.dev/owner-uid` label to the children it
//!   marks, so "which children does this owner have" is a lookup, not a scan
//!   of every cached object;
//! - the objects this process wrote and the watch has not shown yet (the
//!   server-side apply responses), so a reconcile reads its own writes: the
//!   observe that follows a create sees what was created instead of a stale
//!   store, and nothing is written twice because the watch lags. An entry
//!   goes as soon as the watch shows that version or a newer one;
//! - routes from each change to the controller of its owner (the controller
//!   owner reference), so drift made by someone else, or a child becoming
//!   ready, wakes exactly the object that owns it.
//!
//! Objects are cached without `managedFields` and the kubectl
//! last-applied annotation, the two largest fields bulkhead never compares,
//! and as their JSON text rather than a parsed tree: a `DynamicObject`
//! (typed metadata plus a `serde_json::Value` of maps and strings) takes
//! several times the memory of its text, and a reconcile parses only the
//! few objects it reads.
//!
//! A kind whose watch has not listed yet (the operator just started, or the
//! kind's CRD is not installed, e.g. CloudNativePG) is not answered from
//! here: [`super::Children`] reads the apiserver as before.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use futures::channel::mpsc;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::children::{ChildKind, LABEL_OWNER_UID, NAMESPACE, owner_label};
use crate::api::{LABEL_MANAGED_BY, MANAGER};

/// A cached object's place: namespace (for namespaced kinds) and name.
type Key = (Option<String>, String);

/// What the cache knows of one object.
#[derive(Debug)]
pub enum Lookup {
    /// The object as last seen (or as this process last wrote it).
    Found(Value),
    /// The kind's watch has listed and does not hold it: absent, or (for a
    /// label-selected kind) present without bulkhead's label. Either way
    /// a desired child in this state must be applied.
    NotCached,
    /// The kind is not cached (or not synced yet): ask the apiserver.
    Unknown,
}

/// Whether owners of a kind are namespaced: a child's owner reference names
/// the owner; a namespaced owner lives in the child's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerScope {
    Cluster,
    Namespaced,
}

/// Where a change of a child is sent: to the controller of the owner kind.
struct Route {
    group: String,
    kind: String,
    scope: OwnerScope,
    to: mpsc::UnboundedSender<Key>,
}

#[derive(Default)]
struct Routes(Mutex<Vec<Route>>);

impl Routes {
    /// Sends the owner of `obj` (its controller owner reference) to the
    /// controllers that asked for that kind.
    fn notify(&self, obj: &DynamicObject) {
        let Some(owner) = obj
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
        else {
            return;
        };
        let group = owner.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let Ok(mut routes) = self.0.lock() else {
            return;
        };
        routes.retain(|r| {
            if r.kind != owner.kind || r.group != group {
                return true;
            }
            let namespace = match r.scope {
                OwnerScope::Cluster => None,
                OwnerScope::Namespaced => obj.namespace(),
            };
            // A closed receiver is a controller that stopped: drop its route.
            r.to.unbounded_send((namespace, owner.name.clone())).is_ok()
        });
    }
}

/// Children of one owner (by owner-uid label), built as the watch goes.
#[derive(Default)]
struct OwnerIndex {
    by_owner: HashMap<String, HashSet<Key>>,
    owner_of: HashMap<Key, String>,
}

impl OwnerIndex {
    fn insert(&mut self, key: Key, owner_uid: Option<&str>) {
        self.remove(&key);
        if let Some(uid) = owner_uid {
            self.by_owner
                .entry(uid.to_string())
                .or_default()
                .insert(key.clone());
            self.owner_of.insert(key, uid.to_string());
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(uid) = self.owner_of.remove(key)
            && let Some(set) = self.by_owner.get_mut(&uid)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_owner.remove(&uid);
            }
        }
    }
}

/// An object this process wrote, kept until the watch shows it.
struct Written {
    resource_version: Option<u64>,
    body: Value,
}

/// One cached object: its resourceVersion and its (trimmed) JSON text.
struct Entry {
    resource_version: Option<u64>,
    json: Box<[u8]>,
}

impl Entry {
    fn of(obj: &DynamicObject) -> Option<Entry> {
        Some(Entry {
            resource_version: version_of(obj.resource_version().as_deref()),
            json: serde_json::to_vec(obj).ok()?.into_boxed_slice(),
        })
    }
}

/// What one kind's watch has shown, as [`Entry`]s. During a relist the new
/// list is gathered apart and replaces the old at its end (as kube-runtime's
/// reflector store does), so objects deleted while the watch was down go.
#[derive(Default)]
struct Objects {
    live: HashMap<Key, Entry>,
    relisting: Option<HashMap<Key, Entry>>,
}

impl Objects {
    fn apply(&mut self, obj: &DynamicObject) {
        if let Some(entry) = Entry::of(obj) {
            self.live.insert(key_of(obj), entry);
        }
    }
    fn delete(&mut self, key: &Key) {
        self.live.remove(key);
    }
    fn begin_relist(&mut self) {
        self.relisting = Some(HashMap::new());
    }
    fn relisted(&mut self, obj: &DynamicObject) {
        if let (Some(relisting), Some(entry)) = (self.relisting.as_mut(), Entry::of(obj)) {
            relisting.insert(key_of(obj), entry);
        }
    }
    fn finish_relist(&mut self) {
        if let Some(relisted) = self.relisting.take() {
            self.live = relisted;
        }
    }
}

/// The cache of one child kind.
struct KindCache {
    objects: RwLock<Objects>,
    synced: AtomicBool,
    index: RwLock<OwnerIndex>,
    written: Mutex<HashMap<Key, Written>>,
}

fn key_of(obj: &DynamicObject) -> Key {
    (obj.namespace(), obj.name_any())
}

fn owner_uid(obj: &DynamicObject) -> Option<&str> {
    obj.labels().get(LABEL_OWNER_UID).map(String::as_str)
}

/// resourceVersions are opaque to clients, but the apiserver's are etcd
/// revisions: integers that only grow. One that does not parse is never
/// taken as newer than anything, so the watch's copy wins.
fn version_of(value: Option<&str>) -> Option<u64> {
    value.and_then(|v| v.parse().ok())
}

/// Removes the fields bulkhead never reads, before an object is cached.
fn trim(obj: &mut DynamicObject) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

impl KindCache {
    /// Forgets what this process wrote of `key` once the watch holds that
    /// version or a newer one.
    fn seen(&self, key: &Key, resource_version: Option<u64>) {
        if let Ok(mut written) = self.written.lock()
            && let Some(w) = written.get(key)
            && (w.resource_version.is_none() || w.resource_version <= resource_version)
        {
            written.remove(key);
        }
    }

    /// The resourceVersion of `key` in the watch's store.
    fn stored_version(&self, key: &Key) -> Option<u64> {
        let objects = self.objects.read().ok()?;
        objects.live.get(key)?.resource_version
    }

    /// The watch's copy of `key`: its version and its parsed JSON (`Err`
    /// when the cache cannot be read).
    fn stored(&self, key: &Key) -> Result<Option<(Option<u64>, Value)>, ()> {
        let objects = self.objects.read().map_err(|_| ())?;
        match objects.live.get(key) {
            Some(entry) => serde_json::from_slice(&entry.json)
                .map(|value| Some((entry.resource_version, value)))
                .map_err(|_| ()),
            None => Ok(None),
        }
    }

    fn lookup(&self, namespace: Option<&str>, name: &str) -> Lookup {
        if !self.synced.load(Ordering::Acquire) {
            return Lookup::Unknown;
        }
        let key = (namespace.map(str::to_string), name.to_string());
        let Ok(cached) = self.stored(&key) else {
            return Lookup::Unknown;
        };
        let cached_version = cached.as_ref().and_then(|(version, _)| *version);
        if let Ok(written) = self.written.lock()
            && let Some(w) = written.get(&key)
            && w.resource_version.is_some()
            && (cached.is_none() || w.resource_version > cached_version)
        {
            return Lookup::Found(w.body.clone());
        }
        match cached {
            Some((_, value)) => Lookup::Found(value),
            None => Lookup::NotCached,
        }
    }

    /// Every cached child labelled with `owner_uid`, including those this
    /// process wrote that the watch has not shown yet. `None`: not synced.
    fn owned(&self, owner_uid: &str) -> Option<Vec<(Key, Value)>> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        let mut keys: HashSet<Key> = self
            .index
            .read()
            .ok()?
            .by_owner
            .get(owner_uid)
            .cloned()
            .unwrap_or_default();
        if let Ok(written) = self.written.lock() {
            keys.extend(
                written
                    .iter()
                    .filter(|(_, w)| owner_label(&w.body) == Some(owner_uid))
                    .map(|(k, _)| k.clone()),
            );
        }
        let mut out = Vec::new();
        for key in keys {
            if let Lookup::Found(body) = self.lookup(key.0.as_deref(), &key.1)
                && owner_label(&body) == Some(owner_uid)
            {
                out.push((key, body));
            }
        }
        Some(out)
    }
}

/// The watches of every cached child kind.
pub struct ChildCache {
    kinds: HashMap<ChildKind, Arc<KindCache>>,
    routes: Arc<Routes>,
}

impl ChildCache {
    /// Starts one watch per kind in `kinds` (each on its own task, for the
    /// life of the process) and returns at once; each kind is answered
    /// from memory once its first list is in.
    pub fn start(client: &Client, kinds: &[ChildKind]) -> Self {
        let routes = Arc::new(Routes::default());
        let mut caches = HashMap::new();
        for kind in kinds {
            let resource = kind.api_resource();
            let cache = Arc::new(KindCache {
                objects: RwLock::new(Objects::default()),
                synced: AtomicBool::new(false),
                index: RwLock::new(OwnerIndex::default()),
                written: Mutex::new(HashMap::new()),
            });
            let config = if *kind == NAMESPACE {
                watcher::Config::default()
            } else {
                watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"))
            };
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            tokio::spawn(drive(*kind, cache.clone(), api, config, routes.clone()));
            caches.insert(*kind, cache);
        }
        ChildCache {
            kinds: caches,
            routes,
        }
    }

    /// The cache's view of one object.
    pub fn lookup(&self, kind: ChildKind, namespace: Option<&str>, name: &str) -> Lookup {
        match self.kinds.get(&kind) {
            Some(cache) => cache.lookup(namespace.filter(|_| kind.namespaced), name),
            None => Lookup::Unknown,
        }
    }

    /// Whether `kind` is answered from memory: its watch has listed (so,
    /// for a custom resource, its CRD is installed and served).
    pub fn synced(&self, kind: ChildKind) -> bool {
        self.kinds
            .get(&kind)
            .is_some_and(|c| c.synced.load(Ordering::Acquire))
    }

    /// Children of `kind` labelled with `owner_uid`; `None` when the kind
    /// is not answered from memory.
    pub fn owned(&self, kind: ChildKind, owner_uid: &str) -> Option<Vec<(Key, Value)>> {
        self.kinds.get(&kind)?.owned(owner_uid)
    }

    /// Keeps what this process just wrote (a server-side apply's response)
    /// until the watch shows it.
    pub fn wrote(&self, kind: ChildKind, response: &DynamicObject) {
        let Some(cache) = self.kinds.get(&kind) else {
            return;
        };
        let mut obj = response.clone();
        trim(&mut obj);
        let key = key_of(&obj);
        let resource_version = version_of(obj.resource_version().as_deref());
        // Checked under the lock that `seen` takes after the store is
        // updated: the watch may have shown this version already (it often
        // wins the race with the apply response), and an entry made after
        // that would stay, a second copy of the object, until the object
        // next changes.
        let Ok(mut written) = cache.written.lock() else {
            return;
        };
        if cache.stored_version(&key) >= resource_version {
            written.remove(&key);
            return;
        }
        // Serialised only once it is known to be kept.
        if let Ok(body) = serde_json::to_value(&obj) {
            written.insert(
                key,
                Written {
                    resource_version,
                    body,
                },
            );
        }
    }

    /// Forgets what this process wrote of an object it deleted.
    pub fn deleted(&self, kind: ChildKind, namespace: Option<&str>, name: &str) {
        if let Some(cache) = self.kinds.get(&kind)
            && let Ok(mut written) = cache.written.lock()
        {
            written.remove(&(namespace.map(str::to_string), name.to_string()));
        }
    }

    /// A stream of the owners of type `K` whose children changed, for
    /// `Controller::reconcile_on`: a child edited or deleted by someone
    /// else, or one whose status moved, wakes its owner.
    pub fn owner_changes<K>(
        &self,
        scope: OwnerScope,
    ) -> impl futures::Stream<Item = ObjectRef<K>> + Send + use<K>
    where
        K: Resource<DynamicType = ()>,
    {
        let (to, from) = mpsc::unbounded();
        if let Ok(mut routes) = self.routes.0.lock() {
            routes.push(Route {
                group: K::group(&()).into_owned(),
                kind: K::kind(&()).into_owned(),
                scope,
                to,
            });
        }
        from.map(|(namespace, name): Key| {
            let mut owner = ObjectRef::<K>::new(&name);
            owner.namespace = namespace;
            owner
        })
    }

    /// How many objects the caches hold (for the benchmark and metrics).
    pub fn len(&self) -> usize {
        self.kinds
            .values()
            .map(|c| c.objects.read().map_or(0, |o| o.live.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs one kind's watch for the life of the process: fills the store,
/// keeps the owner index, drops written entries the watch caught up with,
/// and routes each change to the owner's controller.
async fn drive(
    kind: ChildKind,
    cache: Arc<KindCache>,
    api: Api<DynamicObject>,
    config: watcher::Config,
    routes: Arc<Routes>,
) {
    let api_version = kind.api_version();
    let events = watcher(api, config).default_backoff().modify(move |obj| {
        trim(obj);
        // A LIST's items carry no apiVersion and kind, a watch event's do:
        // without them a child created before the first LIST finished
        // would look drifted (`.apiVersion` changed) at every reconcile,
        // and a no-op apply never brings the watch event that fixes it.
        if obj.types.is_none() {
            obj.types = Some(kube::core::TypeMeta {
                api_version: api_version.clone(),
                kind: kind.kind.to_string(),
            });
        }
    });
    futures::pin_mut!(events);
    let mut relisting: Option<OwnerIndex> = None;
    let mut warned = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                relisting = Some(OwnerIndex::default());
                if let Ok(mut objects) = cache.objects.write() {
                    objects.begin_relist();
                }
            }
            Ok(watcher::Event::InitApply(obj)) => {
                if let Ok(mut objects) = cache.objects.write() {
                    objects.relisted(&obj);
                }
                if let Some(index) = relisting.as_mut() {
                    index.insert(key_of(&obj), owner_uid(&obj));
                }
                cache.seen(&key_of(&obj), version_of(obj.resource_version().as_deref()));
                routes.notify(&obj);
            }
            Ok(watcher::Event::InitDone) => {
                if let Ok(mut objects) = cache.objects.write() {
                    objects.finish_relist();
                }
                if let (Some(index), Ok(mut live)) = (relisting.take(), cache.index.write()) {
                    *live = index;
                }
                if !cache.synced.swap(true, Ordering::AcqRel) {
                    info!(
                        kind = kind.kind,
                        objects = cache.objects.read().map_or(0, |o| o.live.len()),
                        "child cache synced"
                    );
                }
                warned = false;
            }
            Ok(watcher::Event::Apply(obj)) => {
                let key = key_of(&obj);
                if let Ok(mut objects) = cache.objects.write() {
                    objects.apply(&obj);
                }
                if let Ok(mut index) = cache.index.write() {
                    index.insert(key.clone(), owner_uid(&obj));
                }
                cache.seen(&key, version_of(obj.resource_version().as_deref()));
                routes.notify(&obj);
            }
            Ok(watcher::Event::Delete(obj)) => {
                let key = key_of(&obj);
                if let Ok(mut objects) = cache.objects.write() {
                    objects.delete(&key);
                }
                if let Ok(mut index) = cache.index.write() {
                    index.remove(&key);
                }
                if let Ok(mut written) = cache.written.lock() {
                    written.remove(&key);
                }
                routes.notify(&obj);
            }
            Err(e) => {
                // E.g. CloudNativePG not installed (or uninstalled): the
                // watch retries with backoff, and until it has listed again
                // reads go to the apiserver, which answers for itself.
                cache.synced.store(false, Ordering::Release);
                if !warned {
                    warn!(kind = kind.kind, error = %e, "child watch failed; reading this kind from the apiserver until it recovers");
                    warned = true;
                } else {
                    debug!(kind = kind.kind, error = %e, "child watch still failing");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_index_follows_relabels_and_deletes() {
        let mut index = OwnerIndex::default();
        let a: Key = (Some("ns".into()), "a".into());
        index.insert(a.clone(), Some("u1"));
        index.insert((None, "b".into()), Some("u1"));
        assert_eq!(index.by_owner["u1"].len(), 2);
        index.insert(a.clone(), Some("u2"));
        assert_eq!(index.by_owner["u1"].len(), 1);
        assert!(index.by_owner["u2"].contains(&a));
        index.insert(a.clone(), None);
        assert!(!index.by_owner.contains_key("u2"));
        index.remove(&(None, "b".into()));
        assert!(index.by_owner.is_empty() && index.owner_of.is_empty());
    }

    fn config_map(name: &str, version: &str, owner: &str, value: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": "ns", "resourceVersion": version,
                          "labels": { LABEL_OWNER_UID: owner } },
            "data": { "k": value },
        }))
        .expect("config map")
    }

    /// One kind's cache, synced; tests apply watch events to `objects`.
    fn kind_cache() -> KindCache {
        KindCache {
            objects: RwLock::new(Objects::default()),
            synced: AtomicBool::new(true),
            index: RwLock::new(OwnerIndex::default()),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// What the watch task does with an Apply event, for the store.
    fn watch_shows(cache: &KindCache, obj: &DynamicObject) {
        cache.objects.write().expect("lock").apply(obj);
    }

    /// What a reconcile reads of ConfigMap `name` in "ns": its value.
    fn value_of(cache: &KindCache, name: &str) -> Option<String> {
        match cache.lookup(Some("ns"), name) {
            Lookup::Found(v) => v["data"]["k"].as_str().map(str::to_string),
            _ => None,
        }
    }

    fn not_cached(cache: &KindCache, name: &str) -> bool {
        matches!(cache.lookup(Some("ns"), name), Lookup::NotCached)
    }

    /// [`watch_shows`], and the owner index as the watch task keeps it.
    fn watch_shows_owned(cache: &KindCache, obj: &DynamicObject) {
        watch_shows(cache, obj);
        cache
            .index
            .write()
            .expect("lock")
            .insert(key_of(obj), owner_uid(obj));
    }

    #[test]
    fn a_reconcile_reads_its_own_writes_until_the_watch_catches_up() {
        let cache = kind_cache();
        watch_shows(&cache, &config_map("cm", "5", "u1", "old"));
        let key: Key = (Some("ns".into()), "cm".into());
        // This process applied version 7; the watch still shows 5.
        cache.written.lock().expect("lock").insert(
            key.clone(),
            Written {
                resource_version: Some(7),
                body: serde_json::to_value(config_map("cm", "7", "u1", "new")).expect("json"),
            },
        );
        assert_eq!(value_of(&cache, "cm").as_deref(), Some("new"));
        // The watch shows 7: its copy wins and the written one goes.
        watch_shows(&cache, &config_map("cm", "7", "u1", "new"));
        cache.seen(&key, Some(7));
        assert!(cache.written.lock().expect("lock").is_empty());
        // Someone else's later edit (9) is what a reconcile then sees.
        watch_shows(&cache, &config_map("cm", "9", "u1", "edited"));
        assert_eq!(value_of(&cache, "cm").as_deref(), Some("edited"));
        assert!(not_cached(&cache, "other"));
        cache.synced.store(false, Ordering::Release);
        assert!(
            matches!(cache.lookup(Some("ns"), "cm"), Lookup::Unknown),
            "not synced: ask the apiserver"
        );
    }

    #[test]
    fn an_owners_children_include_those_just_written() {
        let cache = kind_cache();
        let seen = config_map("seen", "3", "u1", "v");
        watch_shows_owned(&cache, &seen);
        cache.written.lock().expect("lock").insert(
            (Some("ns".into()), "fresh".into()),
            Written {
                resource_version: Some(4),
                body: serde_json::to_value(config_map("fresh", "4", "u1", "v")).expect("json"),
            },
        );
        let other = config_map("other", "5", "u2", "v");
        watch_shows_owned(&cache, &other);
        let mut names: Vec<String> = cache
            .owned("u1")
            .expect("synced")
            .into_iter()
            .map(|((_, name), _)| name)
            .collect();
        names.sort();
        assert_eq!(names, ["fresh", "seen"]);
    }

    #[test]
    fn a_relist_drops_what_was_deleted_while_the_watch_was_down() {
        let cache = kind_cache();
        watch_shows(&cache, &config_map("kept", "3", "u1", "v"));
        watch_shows(&cache, &config_map("gone", "4", "u1", "v"));
        {
            let mut objects = cache.objects.write().expect("lock");
            objects.begin_relist();
            objects.relisted(&config_map("kept", "6", "u1", "v2"));
            // Until the relist ends, reads see the old list.
            assert!(
                objects
                    .live
                    .contains_key(&(Some("ns".into()), "gone".into()))
            );
            objects.finish_relist();
        }
        assert_eq!(value_of(&cache, "kept").as_deref(), Some("v2"));
        assert!(not_cached(&cache, "gone"));
    }

    #[test]
    fn resource_versions_that_do_not_parse_are_never_newer() {
        assert_eq!(version_of(Some("12")), Some(12));
        assert_eq!(version_of(Some("abc")), None);
        assert!(version_of(Some("abc")) < version_of(Some("1")));
    }
}
