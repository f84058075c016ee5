//! The crash guard: an operator that dies between its write before the
//! create (finalizer and external name) and the create call, or right
//! after the create, never creates twice when it comes back.
//! Each operator here is a real `bulkhead run` process stopped at a fail point.

mod support;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, ResourceExt};
use support::cnpg;
use support::controlplane::{ControlPlane, unique, wait_for};
use support::objects::{WAIT, database_cluster, environment, is_true, organization, wait_ready};

/// The names of the CloudNativePG objects `api` lists.
async fn names(api: &Api<DynamicObject>) -> Vec<String> {
    api.list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect()
}

/// Runs the whole crash/restart cycle at one fail point and checks that
/// exactly one CloudNativePG Cluster (and one of each of its Databases)
/// exists afterwards.
async fn crash_at(fail_point: &str, expected_exit: i32) {
    let cp = ControlPlane::full();
    let client = cp.client().await;
    let name = format!("c-{}", unique());

    // Parents first, with a healthy operator.
    let mut healthy = cp.start_operator(&[]);
    organization(&name)
        .create(&Api::<Organization>::all(client.clone()))
        .await;
    let envs: Api<Environment> = Api::all(client.clone());
    environment(&name, &name, "staging").create(&envs).await;
    wait_ready(&envs, &name).await;
    assert!(
        healthy.stop().is_some_and(|s| s.success()),
        "healthy operator exits cleanly:\n{}",
        healthy.log()
    );

    // The DatabaseCluster is created while no operator runs; the next one
    // dies at the fail point.
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &name);
    database_cluster("db", &name)
        .without_users()
        .create(&dbcs)
        .await;
    let mut crashing = cp.start_operator(&["--fail-point", fail_point]);
    let status = crashing
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("operator did not stop at {fail_point}:\n{}", crashing.log()));
    assert_eq!(
        status.code(),
        Some(expected_exit),
        "exit code at {fail_point}:\n{}",
        crashing.log()
    );

    // CloudNativePG Clusters are named by bulkhead, so the guard is the
    // external name, recorded with the finalizer in the one write before
    // the create: after a crash, the operator looks under that name.
    // (`create-pending` is for providers that pick names.)
    let db = dbcs.get("db").await.expect("dbc");
    assert_eq!(
        db.annotations()
            .get("bulkhead.dev/external-name")
            .map(String::as_str),
        Some("db-stage"),
        "the external name was recorded before the crash"
    );
    assert!(
        db.finalizers()
            .iter()
            .any(|f| f == "bulkhead.dev/finalizer"),
        "the finalizer was added before the crash"
    );
    assert!(
        !db.annotations().contains_key("bulkhead.dev/create-pending"),
        "no create-pending where bulkhead picks the name"
    );
    let clusters = cnpg::clusters(&client, &name);
    let before = names(&clusters).await.len();
    match fail_point {
        "exit-after-create-pending" => assert_eq!(before, 0, "crashed before the create"),
        _ => assert_eq!(before, 1, "crashed after the create"),
    }

    // Restart: it observes first, then finishes the job exactly once
    // (Synced: CloudNativePG under kwok never reports the Cluster Ready).
    let _restarted = cp.start_operator(&[]);
    let db = wait_for(&dbcs, "db", WAIT, "Synced after restart", |d| {
        is_true(d, "Synced") && !d.annotations().contains_key("bulkhead.dev/create-pending")
    })
    .await;
    assert!(
        !db.annotations().contains_key("bulkhead.dev/create-pending"),
        "guard cleared"
    );
    assert_eq!(
        db.annotations()
            .get("bulkhead.dev/external-name")
            .map(String::as_str),
        Some("db-stage")
    );
    assert_eq!(names(&clusters).await, ["db-stage"], "exactly one Cluster");
    assert_eq!(
        names(&cnpg::databases(&client, &name)).await,
        ["db-stage-db-app"],
        "exactly one Database"
    );
}

// The two cycles share one control plane but each needs the only operator,
// so they run one after the other in a single test.
#[tokio::test]
async fn a_crash_around_create_never_creates_twice() {
    crash_at("exit-after-create-pending", 17).await;
    crash_at("exit-after-create", 18).await;
}
