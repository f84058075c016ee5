//! CloudNativePG objects in tests: typed-enough access to the Clusters and
//! Databases bulkhead writes, and the one thing the real CloudNativePG
//! cannot do under kwok — report a Cluster healthy, which needs an instance
//! manager answering inside a running pod.

use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde_json::{Value, json};

pub fn cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster"),
        "clusters",
    )
}

pub fn database_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Database"),
        "databases",
    )
}

pub fn clusters(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &cluster_resource())
}

pub fn databases(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &database_resource())
}

/// The object as JSON, for pointer lookups.
pub fn json_of(obj: &DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// Writes, in place of CloudNativePG, the status it writes once every
/// instance manager reports in: the Cluster `Cluster in healthy state` with
/// `Ready=True` (reason `ClusterIsReady`) and all instances ready, and each
/// of its Databases `applied: true` (which CloudNativePG's instance manager
/// writes after CREATE DATABASE). Under kwok no instance manager runs, so
/// the real operator keeps the Cluster at "Instance Status Extraction
/// Error"; its reconciliation of this one Cluster is switched off first
/// with CloudNativePG's own `cnpg.io/reconciliationLoop: disabled`
/// annotation, so it does not write that back over this status.
pub async fn write_healthy_status_as_cloudnativepg_would(client: &Client, ns: &str, cluster: &str) {
    let api = clusters(client, ns);
    let pp = PatchParams::default();
    api.patch(
        cluster,
        &pp,
        &Patch::Merge(
            json!({ "metadata": { "annotations": { "cnpg.io/reconciliationLoop": "disabled" } } }),
        ),
    )
    .await
    .expect("disable CloudNativePG's reconciliation of the Cluster");
    let live = api.get(cluster).await.expect("read the Cluster");
    let instances = json_of(&live)
        .pointer("/spec/instances")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let status = json!({ "status": {
        "phase": "Cluster in healthy state",
        "phaseReason": "",
        "instances": instances,
        "readyInstances": instances,
        "writeService": format!("{cluster}-rw"),
        "readService": format!("{cluster}-r"),
        "currentPrimary": format!("{cluster}-1"),
        "targetPrimary": format!("{cluster}-1"),
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "ClusterIsReady",
            "message": "Cluster is Ready", "lastTransitionTime": "2026-01-01T00:00:00Z",
        }],
    }});
    // A reconcile CloudNativePG had already started may still land after
    // the annotation: write until the healthy status stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        api.patch_status(cluster, &pp, &Patch::Merge(&status))
            .await
            .expect("write the Cluster's status");
        // Healthy at three looks a second apart: a reconcile that started
        // before the annotation can land seconds later on a loaded machine.
        let mut stayed = true;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let phase = api
                .get(cluster)
                .await
                .ok()
                .and_then(|c| {
                    json_of(&c)
                        .pointer("/status/phase")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_default();
            stayed &= phase == "Cluster in healthy state";
        }
        if stayed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "CloudNativePG kept overwriting the status"
        );
    }
    let dbs = databases(client, ns);
    for db in dbs
        .list(&Default::default())
        .await
        .expect("list Databases")
        .items
    {
        let v = json_of(&db);
        if v.pointer("/spec/cluster/name").and_then(Value::as_str) != Some(cluster) {
            continue;
        }
        let name = db.metadata.name.clone().unwrap_or_default();
        dbs.patch_status(
            &name,
            &pp,
            &Patch::Merge(json!({ "status": { "applied": true, "observedGeneration": db.metadata.generation } })),
        )
        .await
        .expect("write the Database's status");
    }
}
