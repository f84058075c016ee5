//! Test objects built in code (after kube-rs/controller-rs `fixtures.rs`)
//! instead of `format!` YAML, and the condition checks every test binary
//! uses to say what a user would see.
//!
//! Builders start from the smallest valid object; a test states what it
//! needs on top with the `with_*` methods or by setting typed fields.

use std::time::Duration;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::PostParams;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::controlplane::{condition, wait_for};

/// How long a test waits for the operator to converge an object.
pub const WAIT: Duration = Duration::from_secs(90);

const API_VERSION: &str = "bulkhead.dev/v1alpha1";

/// A custom resource under construction: its JSON form, so builders can
/// set any field the CRD has, parsed into the typed object at the end.
#[derive(Clone, Debug)]
pub struct Build<K> {
    body: Value,
    kind: std::marker::PhantomData<K>,
}

impl<K: DeserializeOwned + serde::Serialize> Build<K> {
    fn new(kind: &str, metadata: Value, spec: Value) -> Self {
        Build {
            body: json!({ "apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec }),
            kind: std::marker::PhantomData,
        }
    }

    /// Sets (or replaces) `spec.<field>`.
    pub fn spec(mut self, field: &str, value: Value) -> Self {
        self.body["spec"][field] = value;
        self
    }

    /// Sets a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.body["metadata"]["labels"][key] = json!(value);
        self
    }

    /// Sets an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.body["metadata"]["annotations"][key] = json!(value);
        self
    }

    /// The typed object.
    pub fn build(&self) -> K {
        serde_json::from_value(self.body.clone()).expect("test object matches its type")
    }

    /// The object as JSON text, for `kubectl apply -f -` (as a tenant, say).
    pub fn manifest(&self) -> String {
        self.body.to_string()
    }

    /// Creates the object through `api`.
    pub async fn create(&self, api: &Api<K>) -> K
    where
        K: Resource + Clone + std::fmt::Debug,
    {
        api.create(&PostParams::default(), &self.build())
            .await
            .expect("create test object")
    }
}

/// An Organization with an empty spec (kubernetes provider, defaults).
pub fn organization(name: &str) -> Build<Organization> {
    Build::new("Organization", json!({ "name": name }), json!({}))
}

impl Build<Organization> {
    /// Claims tenancy `slug` (the name of its ClusterRole and binding).
    pub fn slug(self, slug: &str) -> Self {
        self.spec("slug", json!(slug))
    }

    /// Adds a member with `role` (`admin` or `member`).
    pub fn member(mut self, email: &str, role: &str) -> Self {
        let members = self.body["spec"]["members"].as_array().cloned();
        let mut members = members.unwrap_or_default();
        members.push(json!({ "email": email, "role": role }));
        self.body["spec"]["members"] = Value::Array(members);
        self
    }
}

/// An Environment of `tier` in Organization `org`, owning the namespace
/// named after it.
pub fn environment(name: &str, org: &str, tier: &str) -> Build<Environment> {
    Build::new(
        "Environment",
        json!({ "name": name }),
        json!({ "organizationRef": { "name": org }, "tier": tier }),
    )
}

impl Build<Environment> {
    /// Databases on the PostgreSQL server whose admin connection is under
    /// key `dsn` of Secret `secret` in the credentials namespace.
    pub fn postgres(self, secret: &str) -> Self {
        self.spec(
            "databaseProvider",
            json!({ "type": "postgres", "credentialsSecretRef": { "name": secret, "key": "dsn" } }),
        )
    }

    /// The `developer` role for Group `group`.
    pub fn developers(self, group: &str) -> Self {
        self.spec(
            "access",
            json!([{ "role": "developer", "subjects": [{ "kind": "Group", "name": group }] }]),
        )
    }
}

/// A DatabaseCluster in `namespace` with database `app` and its
/// read-write user `app_rw`.
pub fn database_cluster(name: &str, namespace: &str) -> Build<DatabaseCluster> {
    Build::new(
        "DatabaseCluster",
        json!({ "name": name, "namespace": namespace }),
        json!({
            "databases": [{ "name": "app" }],
            "users": [{ "name": "app_rw", "databases": ["app"], "privileges": "readWrite" }],
        }),
    )
}

impl Build<DatabaseCluster> {
    /// Also the read-only user `app_ro` on `app`.
    pub fn with_reader(mut self) -> Self {
        let reader = json!({ "name": "app_ro", "databases": ["app"], "privileges": "readOnly" });
        if let Some(users) = self.body["spec"]["users"].as_array_mut() {
            users.push(reader);
        }
        self
    }

    /// No users at all (the spec's `users` left out).
    pub fn without_users(mut self) -> Self {
        if let Some(spec) = self.body["spec"].as_object_mut() {
            spec.remove("users");
        }
        self
    }

    /// The connection Secret `<name>-conn`.
    pub fn connection_secret(self) -> Self {
        let name = format!(
            "{}-conn",
            self.body["metadata"]["name"].as_str().unwrap_or_default()
        );
        self.spec("writeConnectionSecretToRef", json!({ "name": name }))
    }
}

/// What carries conditions: the three kinds, or a condition list itself.
pub trait Conditions {
    fn conditions(&self) -> &[Condition];
}

impl Conditions for [Condition] {
    fn conditions(&self) -> &[Condition] {
        self
    }
}

impl Conditions for Vec<Condition> {
    fn conditions(&self) -> &[Condition] {
        self
    }
}

macro_rules! conditions_of {
    ($($kind:ty),*) => {$(
        impl Conditions for $kind {
            fn conditions(&self) -> &[Condition] {
                self.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
            }
        }
    )*};
}
conditions_of!(Organization, Environment, DatabaseCluster);

/// Condition `type_` is True (at whatever generation).
pub fn is_true<C: Conditions + ?Sized>(c: &C, type_: &str) -> bool {
    condition(c.conditions(), type_).is_some_and(|c| c.status == "True")
}

/// Ready=True, reported for the object's current generation.
pub fn is_ready<K: Conditions + Resource>(obj: &K) -> bool {
    condition(obj.conditions(), "Ready")
        .is_some_and(|c| c.status == "True" && c.observed_generation == obj.meta().generation)
}

/// Condition `type_` has `status` and `reason`.
pub fn has_reason<C: Conditions + ?Sized>(c: &C, type_: &str, status: &str, reason: &str) -> bool {
    condition(c.conditions(), type_).is_some_and(|c| c.status == status && c.reason == reason)
}

/// The reason of condition `type_`.
pub fn reason_of<C: Conditions + ?Sized>(c: &C, type_: &str) -> Option<String> {
    condition(c.conditions(), type_).map(|c| c.reason.clone())
}

/// The message of condition `type_`, empty when there is none.
pub fn message_of<C: Conditions + ?Sized>(c: &C, type_: &str) -> String {
    condition(c.conditions(), type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Every Event in the cluster now.
pub async fn all_events(client: &kube::Client) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::all(client.clone())
        .list(&Default::default())
        .await
        .expect("list events")
        .items
}

/// Whether `name` exists now.
pub async fn exists<K>(api: &Api<K>, name: &str) -> bool
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get {name}: {e}"))
        .is_some()
}

/// Waits until `name` exists (`what` names it if it never does).
pub async fn wait_exists<K>(api: &Api<K>, name: &str, timeout: Duration, what: &str) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    wait_for(api, name, timeout, what, |_| true).await
}

/// Waits for CloudNativePG's Cluster `cluster` in `ns`, then writes the
/// healthy status CloudNativePG would: under kwok it never hears from a
/// PostgreSQL.
pub async fn cnpg_cluster_healthy(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    timeout: Duration,
) {
    wait_exists(
        &super::cnpg::clusters(client, ns),
        cluster,
        timeout,
        "Cluster",
    )
    .await;
    super::cnpg::write_healthy_status_as_cloudnativepg_would(client, ns, cluster).await;
}

/// Waits until the object is Ready at its current generation.
pub async fn wait_ready<K>(api: &Api<K>, name: &str) -> K
where
    K: Conditions + Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    wait_ready_within(api, name, WAIT).await
}

/// [`wait_ready`] for binaries whose operator needs longer than [`WAIT`].
pub async fn wait_ready_within<K>(api: &Api<K>, name: &str, timeout: Duration) -> K
where
    K: Conditions + Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    wait_for(api, name, timeout, "Ready", is_ready).await
}

/// Waits until condition `type_` is `status` with `reason`.
pub async fn wait_reason<K>(api: &Api<K>, name: &str, type_: &str, status: &str, reason: &str) -> K
where
    K: Conditions + Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    wait_reason_within(api, name, WAIT, type_, status, reason).await
}

/// [`wait_reason`] for binaries whose operator needs longer than [`WAIT`].
pub async fn wait_reason_within<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    type_: &str,
    status: &str,
    reason: &str,
) -> K
where
    K: Conditions + Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let what = format!("{type_}={status} {reason}");
    wait_for(api, name, timeout, &what, |o| {
        has_reason(o, type_, status, reason)
    })
    .await
}
