//! In-cluster children as one generic set: every object the kubernetes
//! provider manages is built as JSON, applied with server-side apply, found
//! again by the `bulkhead.dev/owner-uid` label, and compared field by field
//! against what was asked (apiserver defaults may add fields; they never
//! count as drift).

use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::cache::{ChildCache, Lookup, OwnerScope};
use crate::api::{LABEL_MANAGED_BY, MANAGER};
use crate::provider::{Owner, ProviderError};
use crate::reasons;
use crate::reconcile::managed::FIELD_MANAGER;

/// Label linking a child to the bulkhead object that owns it.
pub const LABEL_OWNER_UID: &str = "bulkhead.dev/owner-uid";

/// Annotation holding a digest of the fields bulkhead last applied to a
/// child. Comparing fields alone cannot tell that a field was dropped from
/// the desired object (a removed ConfigMap key is still in the live one),
/// while server-side apply removes it: a different digest means "apply
/// again", an equal one plus equal fields means "nothing to write".
pub const ANNOTATION_APPLIED: &str = "bulkhead.dev/applied-digest";

/// A type of child object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChildKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl ChildKind {
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

pub const NAMESPACE: ChildKind = ChildKind {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    namespaced: false,
};
pub const CONFIG_MAP: ChildKind = ChildKind {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    namespaced: true,
};
pub const SECRET: ChildKind = ChildKind {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    namespaced: true,
};
pub const SERVICE: ChildKind = ChildKind {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    namespaced: true,
};
pub const SERVICE_ACCOUNT: ChildKind = ChildKind {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    namespaced: true,
};
pub const RESOURCE_QUOTA: ChildKind = ChildKind {
    group: "",
    version: "v1",
    kind: "ResourceQuota",
    plural: "resourcequotas",
    namespaced: true,
};
pub const ROLE_BINDING: ChildKind = ChildKind {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "RoleBinding",
    plural: "rolebindings",
    namespaced: true,
};
pub const CLUSTER_ROLE: ChildKind = ChildKind {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRole",
    plural: "clusterroles",
    namespaced: false,
};
pub const CLUSTER_ROLE_BINDING: ChildKind = ChildKind {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRoleBinding",
    plural: "clusterrolebindings",
    namespaced: false,
};
pub const NETWORK_POLICY: ChildKind = ChildKind {
    group: "networking.k8s.io",
    version: "v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    namespaced: true,
};

/// One desired child: its kind, identity and the fields we own.
#[derive(Clone, Debug)]
pub struct Child {
    pub kind: ChildKind,
    pub namespace: Option<String>,
    pub name: String,
    /// Full object as applied (apiVersion, kind, metadata, and the fields we own).
    pub body: Value,
}

/// Whether live object `live` carries `owner`'s uid label: bulkhead made
/// it for that owner (a Secret under the same name made by anyone else is
/// never written over).
pub fn is_owned_by(live: &Value, owner: &Owner) -> bool {
    owner_label(live) == Some(owner.uid.as_str())
}

/// The owner-uid label of an object in its JSON form.
pub(super) fn owner_label(body: &Value) -> Option<&str> {
    body.pointer("/metadata/labels")?
        .get(LABEL_OWNER_UID)?
        .as_str()
}

impl Child {
    /// Builds a child with bulkhead's labels and, when `owned`, an owner
    /// reference so garbage collection removes it with its owner.
    pub fn new(
        kind: ChildKind,
        namespace: Option<&str>,
        name: &str,
        owner: &Owner,
        owned: bool,
        mut fields: Value,
    ) -> Self {
        let mut metadata = json!({
            "name": name,
            "labels": { LABEL_MANAGED_BY: MANAGER, LABEL_OWNER_UID: owner.uid },
        });
        if let Some(ns) = namespace {
            metadata["namespace"] = json!(ns);
        }
        if owned {
            metadata["ownerReferences"] = json!([{
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }]);
        }
        if let Some(extra) = fields.get_mut("metadata").map(Value::take) {
            merge(&mut metadata, extra);
        }
        if let Some(obj) = fields.as_object_mut() {
            obj.remove("metadata");
        }
        let mut body =
            json!({ "apiVersion": kind.api_version(), "kind": kind.kind, "metadata": metadata });
        merge(&mut body, fields);
        Child {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
            body,
        }
    }

    pub fn describe(&self) -> String {
        describe(self.kind, self.namespace.as_deref(), &self.name)
    }

    /// The same child without the owner-uid label, so the provider that
    /// prunes its children by that label never counts it as one of its own
    /// (for objects a controller writes itself, beside a provider's).
    pub fn unpruned(mut self) -> Self {
        if let Some(labels) = self
            .body
            .get_mut("metadata")
            .and_then(|m| m.get_mut("labels"))
            .and_then(Value::as_object_mut)
        {
            labels.remove(LABEL_OWNER_UID);
        }
        self
    }

    /// The same child without owner references (for deletionPolicy Orphan).
    pub fn without_owner(mut self) -> Self {
        if let Some(meta) = self.body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("ownerReferences");
        }
        self
    }
}

fn describe(kind: ChildKind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", kind.kind),
        None => format!("{} {name}", kind.kind),
    }
}

/// A child bulkhead owns, as found in the cluster.
#[derive(Clone, Debug)]
pub struct OwnedChild {
    pub kind: ChildKind,
    pub namespace: Option<String>,
    pub name: String,
    pub body: Value,
}

impl OwnedChild {
    pub fn describe(&self) -> String {
        describe(self.kind, self.namespace.as_deref(), &self.name)
    }

    /// Whether one of `desired` is this object.
    fn is_one_of(&self, desired: &[Child]) -> bool {
        desired
            .iter()
            .any(|c| c.kind == self.kind && c.name == self.name && c.namespace == self.namespace)
    }
}

/// Merges `from` into `into`, objects key by key (any other value
/// replaces what was there).
pub fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `true` when every field of `want` is present with the same value in
/// `have` (objects recursively; arrays element by element, same length).
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| match h.get(k) {
            Some(hv) => is_subset(v, hv),
            None => {
                v.is_null()
                    || v.as_object().is_some_and(|o| o.is_empty())
                    || v.as_array().is_some_and(|a| a.is_empty())
            }
        }),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        (w, h) => w == h,
    }
}

/// Path of the first field of `want` that `have` lacks or holds
/// differently (for drift messages: paths only, never values).
pub fn first_difference(want: &Value, have: &Value, path: &str) -> Option<String> {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().find_map(|(k, v)| {
            let p = format!("{path}.{k}");
            match h.get(k) {
                Some(hv) => first_difference(v, hv, &p),
                None if is_subset(v, &Value::Object(Default::default())) || v.is_null() => None,
                None => Some(p),
            }
        }),
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => w
            .iter()
            .zip(h)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, &format!("{path}[{i}]"))),
        (w, h) if is_subset(w, h) => None,
        _ => Some(path.to_string()),
    }
}

/// Applies, compares and deletes children. Reads come from the child
/// cache once it is started and synced ([`Children::start_cache`]), from the
/// apiserver otherwise.
#[derive(Clone)]
pub struct Children {
    client: Client,
    cache: Arc<OnceLock<ChildCache>>,
}

fn kube_error(context: &str, e: kube::Error) -> ProviderError {
    match &e {
        // Transient: right after bulkhead binds itself its role in a new
        // namespace the authorizer may not know it yet; a real lack of
        // rights still shows as Forbidden, with backoff.
        kube::Error::Api(s) if s.code == 403 => ProviderError::transient(
            reasons::FORBIDDEN,
            format!("{context}: bulkhead lacks permission: {}", s.message),
        ),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            ProviderError::terminal(reasons::INVALID_SPEC, format!("{context}: {}", s.message))
        }
        kube::Error::Api(s) if s.code == 409 || s.code == 429 || s.code >= 500 => {
            ProviderError::transient(
                reasons::RECONCILE_ERROR,
                format!("{context}: {}", s.message),
            )
        }
        kube::Error::Api(s) => ProviderError::transient(
            reasons::RECONCILE_ERROR,
            format!("{context}: {}", s.message),
        ),
        _ => ProviderError::unavailable(format!("{context}: {e}")),
    }
}

/// Digest of a child's body, for [`ANNOTATION_APPLIED`].
fn digest(body: &Value) -> String {
    // serde_json maps are ordered by key, so equal bodies serialize equally.
    let hash = Sha256::digest(body.to_string().as_bytes());
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn applied_digest(live: &Value) -> Option<&str> {
    live.pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_APPLIED))
        .and_then(Value::as_str)
}

/// Whether applying `child` onto `live` would change nothing: every field
/// bulkhead sets is there as asked, and it was last applied from this very
/// body (so nothing bulkhead used to set has to go).
pub fn is_applied(child: &Child, live: &Value) -> bool {
    applied_digest(live) == Some(digest(&child.body).as_str()) && is_subset(&child.body, live)
}

impl Children {
    pub fn new(client: Client) -> Self {
        Children {
            client,
            cache: Arc::new(OnceLock::new()),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Starts the watches that answer reads of `kinds` from memory (see
    /// [`super::cache`]). Every clone of this `Children` shares them. A
    /// second call does nothing.
    pub fn start_cache(&self, watch_client: &Client, kinds: &[ChildKind]) {
        self.cache
            .get_or_init(|| ChildCache::start(watch_client, kinds));
    }

    /// Owners of type `K` whose cached children changed, for
    /// `Controller::reconcile_on` (nothing until the cache is started).
    pub fn owner_changes<K>(&self, scope: OwnerScope) -> BoxStream<'static, ObjectRef<K>>
    where
        K: Resource<DynamicType = ()> + 'static,
    {
        match self.cache.get() {
            Some(cache) => cache.owner_changes::<K>(scope).boxed(),
            None => futures::stream::empty().boxed(),
        }
    }

    /// Whether reads of `kind` come from a synced watch.
    pub fn watching(&self, kind: ChildKind) -> bool {
        self.cache.get().is_some_and(|c| c.synced(kind))
    }

    /// Objects held by the child cache.
    pub fn cached_objects(&self) -> usize {
        self.cache.get().map_or(0, ChildCache::len)
    }

    fn lookup(&self, kind: ChildKind, namespace: Option<&str>, name: &str) -> Lookup {
        match self.cache.get() {
            Some(cache) => cache.lookup(kind, namespace, name),
            None => Lookup::Unknown,
        }
    }

    fn api(&self, kind: ChildKind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = kind.api_resource();
        match (kind.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The live object, if any: from the cache when it holds it, from the
    /// apiserver when it does not (an object bulkhead did not label, e.g. a
    /// namespace someone else made, is only known to the apiserver).
    pub async fn get(
        &self,
        kind: ChildKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ProviderError> {
        match self.lookup(kind, namespace, name) {
            Lookup::Found(value) => Ok(Some(value)),
            Lookup::NotCached | Lookup::Unknown => self.read(kind, namespace, name).await,
        }
    }

    /// The live object of a desired child. Unlike [`Children::get`], a child
    /// missing from a synced cache is taken as missing without asking the
    /// apiserver: absent or stripped of bulkhead's label, it has to be
    /// applied either way.
    async fn live(&self, child: &Child) -> Result<Option<Value>, ProviderError> {
        match self.lookup(child.kind, child.namespace.as_deref(), &child.name) {
            Lookup::Found(value) => Ok(Some(value)),
            Lookup::NotCached => Ok(None),
            Lookup::Unknown => {
                self.read(child.kind, child.namespace.as_deref(), &child.name)
                    .await
            }
        }
    }

    /// A GET from the apiserver.
    async fn read(
        &self,
        kind: ChildKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ProviderError> {
        let obj = self
            .api(kind, namespace)
            .get_opt(name)
            .await
            .map_err(|e| kube_error(&format!("reading {} {name}", kind.kind), e))?;
        obj.map(|o| {
            serde_json::to_value(o)
                .map_err(|e| ProviderError::transient(reasons::RECONCILE_ERROR, e.to_string()))
        })
        .transpose()
    }

    /// Existing children of `kinds` labelled with the owner's UID.
    pub async fn list_owned(
        &self,
        kinds: &[ChildKind],
        owner: &Owner,
    ) -> Result<Vec<OwnedChild>, ProviderError> {
        let mut out = Vec::new();
        for kind in kinds {
            if let Some(cached) = self.cache.get().and_then(|c| c.owned(*kind, &owner.uid)) {
                out.extend(
                    cached
                        .into_iter()
                        .map(|((namespace, name), body)| OwnedChild {
                            kind: *kind,
                            namespace,
                            name,
                            body,
                        }),
                );
                continue;
            }
            // A namespaced owner's children live in its namespace: listed
            // there, so no cluster-wide read of e.g. Secrets is needed.
            let lp = ListParams::default().labels(&format!("{LABEL_OWNER_UID}={}", owner.uid));
            let list = self
                .api(*kind, owner.namespace.as_deref())
                .list(&lp)
                .await
                .map_err(|e| kube_error(&format!("listing {}", kind.plural), e))?;
            for item in list.items {
                let namespace = item.metadata.namespace.clone();
                let name = item.metadata.name.clone().unwrap_or_default();
                let body = serde_json::to_value(item).map_err(|e| {
                    ProviderError::transient(reasons::RECONCILE_ERROR, e.to_string())
                })?;
                out.push(OwnedChild {
                    kind: *kind,
                    namespace,
                    name,
                    body,
                });
            }
        }
        Ok(out)
    }

    /// Owned children of `kinds` that are not in `desired`.
    async fn stale(
        &self,
        desired: &[Child],
        kinds: &[ChildKind],
        owner: &Owner,
    ) -> Result<Vec<OwnedChild>, ProviderError> {
        let mut owned = self.list_owned(kinds, owner).await?;
        owned.retain(|o| !o.is_one_of(desired));
        Ok(owned)
    }

    /// What differs between the desired children and the cluster: missing
    /// or changed children, and owned children no longer desired.
    pub async fn drift(
        &self,
        desired: &[Child],
        kinds: &[ChildKind],
        owner: &Owner,
    ) -> Result<ChildDrift, ProviderError> {
        let mut drift = ChildDrift::default();
        for child in desired {
            match self.live(child).await? {
                None => drift.missing.push(child.describe()),
                Some(live) => {
                    let mut want = child.body.clone();
                    // Owner references are compared as a set of UIDs only.
                    if let Some(meta) = want.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("ownerReferences");
                    }
                    if let Some(path) = first_difference(&want, &live, "") {
                        drift.changed.push(format!("{} ({path})", child.describe()));
                    } else if applied_digest(&live)
                        .is_some_and(|d| d != digest(&child.body).as_str())
                    {
                        // Applied by bulkhead from another body: something
                        // it set is no longer wanted.
                        drift
                            .changed
                            .push(format!("{} (fields no longer wanted)", child.describe()));
                    }
                    drift.existing += 1;
                }
            }
        }
        drift.stale = self
            .stale(desired, kinds, owner)
            .await?
            .iter()
            .map(OwnedChild::describe)
            .collect();
        Ok(drift)
    }

    /// Applies every desired child that differs from the cluster
    /// (server-side apply, forced: bulkhead owns these fields) and deletes
    /// owned children no longer desired. A child already as desired costs
    /// no request.
    pub async fn apply(
        &self,
        desired: &[Child],
        kinds: &[ChildKind],
        owner: &Owner,
    ) -> Result<(), ProviderError> {
        for child in desired {
            let applied = matches!(
                self.lookup(child.kind, child.namespace.as_deref(), &child.name),
                Lookup::Found(live) if is_applied(child, &live)
            );
            if !applied {
                self.apply_child(child).await?;
            }
        }
        for stale in self.stale(desired, kinds, owner).await? {
            self.delete(stale.kind, stale.namespace.as_deref(), &stale.name)
                .await?;
        }
        Ok(())
    }

    /// Applies one child (server-side apply, forced), stamped with the
    /// digest of its body.
    pub async fn apply_child(&self, child: &Child) -> Result<(), ProviderError> {
        let mut body = child.body.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(annotations) = annotations.as_object_mut() {
                annotations.insert(ANNOTATION_APPLIED.into(), json!(digest(&child.body)));
            }
        }
        self.apply_raw(child.kind, child.namespace.as_deref(), &child.name, &body)
            .await
    }

    /// Re-applies those of `children` that exist; with children built
    /// without owner references this detaches them from their owner, so
    /// garbage collection leaves them (deletionPolicy Orphan).
    pub async fn reapply_existing(&self, children: &[Child]) -> Result<(), ProviderError> {
        for child in children {
            if self.live(child).await?.is_some() {
                self.apply_child(child).await?;
            }
        }
        Ok(())
    }

    /// Applies one object as given (server-side apply, forced).
    pub async fn apply_raw(
        &self,
        kind: ChildKind,
        namespace: Option<&str>,
        name: &str,
        body: &Value,
    ) -> Result<(), ProviderError> {
        let api = self.api(kind, namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        // Right after the operator binds itself its role in a new namespace
        // the apiserver's authorizer may not have seen the binding yet: a
        // 403 is retried briefly before it counts as a failure.
        let mut attempts = 0;
        loop {
            match api.patch(name, &params, &Patch::Apply(body)).await {
                Ok(written) => {
                    if let Some(cache) = self.cache.get() {
                        cache.wrote(kind, &written);
                    }
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 403 && attempts < 10 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(kube_error(&format!("applying {} {name}", kind.kind), e)),
            }
        }
    }

    /// Deletes a child; already gone is fine.
    pub async fn delete(
        &self,
        kind: ChildKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ProviderError> {
        if let Some(cache) = self.cache.get() {
            cache.deleted(kind, namespace, name);
        }
        match self
            .api(kind, namespace)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_error(&format!("deleting {} {name}", kind.kind), e)),
        }
    }

    /// Deletes every owned child of `kinds`.
    pub async fn delete_owned(
        &self,
        kinds: &[ChildKind],
        owner: &Owner,
    ) -> Result<(), ProviderError> {
        for owned in self.list_owned(kinds, owner).await? {
            self.delete(owned.kind, owned.namespace.as_deref(), &owned.name)
                .await?;
        }
        Ok(())
    }
}

/// Differences between desired and live children.
#[derive(Debug, Default)]
pub struct ChildDrift {
    pub missing: Vec<String>,
    pub changed: Vec<String>,
    pub stale: Vec<String>,
    /// How many desired children exist.
    pub existing: usize,
}

impl ChildDrift {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.changed.is_empty() && self.stale.is_empty()
    }

    /// Human-readable list for events and logs.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.missing.iter().map(|m| format!("missing {m}")));
        out.extend(self.changed.iter().map(|m| format!("changed {m}")));
        out.extend(self.stale.iter().map(|m| format!("no longer wanted {m}")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_ignores_server_defaults_but_not_changes() {
        let want = json!({"spec": {"ports": [{"port": 5432}]}, "metadata": {"labels": {"a": "1"}}});
        let have = json!({"spec": {"ports": [{"port": 5432, "protocol": "TCP"}], "clusterIP": "None"},
                          "metadata": {"labels": {"a": "1", "b": "2"}, "uid": "x"}});
        assert!(is_subset(&want, &have));
        let changed = json!({"spec": {"ports": [{"port": 5433, "protocol": "TCP"}]}, "metadata": {"labels": {"a": "1"}}});
        assert!(!is_subset(&want, &changed));
        let extra_item = json!({"spec": {"ports": [{"port": 5432}, {"port": 1}]}, "metadata": {"labels": {"a": "1"}}});
        assert!(!is_subset(&want, &extra_item));
    }

    #[test]
    fn empty_desired_fields_match_absent_live_fields() {
        assert!(is_subset(&json!({"data": {}}), &json!({})));
        assert!(!is_subset(&json!({"data": {"k": "v"}}), &json!({})));
    }

    #[test]
    fn child_carries_labels_and_owner() {
        let owner = Owner {
            api_version: "bulkhead.dev/v1alpha1".into(),
            kind: "Environment".into(),
            name: "staging".into(),
            uid: "u-1".into(),
            namespace: None,
        };
        let c = Child::new(
            CONFIG_MAP,
            Some("staging"),
            "cfg",
            &owner,
            true,
            json!({"data": {"k": "v"}}),
        );
        assert_eq!(c.body["metadata"]["labels"][LABEL_OWNER_UID], "u-1");
        assert_eq!(c.body["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(c.body["data"]["k"], "v");
        let orphan = c.without_owner();
        assert!(orphan.body["metadata"].get("ownerReferences").is_none());
    }
}
