//! In-cluster DatabaseClusters through CloudNativePG, on a real control
//! plane with the real CloudNativePG 1.28 (CRDs, admission webhooks and
//! manager built from its Go module): what a platform engineer sees in the
//! apiserver and on the DatabaseCluster. kwok plays the kubelet, so
//! CloudNativePG creates its Job, PVC, pod and Services but never hears
//! from a PostgreSQL; where a test needs a healthy Cluster it writes the
//! status CloudNativePG would (`write_healthy_status_as_cloudnativepg_would`).

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::cnpg::{self, json_of, write_healthy_status_as_cloudnativepg_would};
use support::controlplane::{
    ControlPlane, Operator, condition, create_yaml, unique, wait_for, wait_gone,
};
use support::objects::{
    Build, Conditions, WAIT, database_cluster, environment, exists, has_reason, is_true,
    message_of, organization, wait_exists, wait_reason,
};

static OPERATOR: OnceLock<Operator> = OnceLock::new();
static OPERATOR_WITHOUT_CNPG: OnceLock<Operator> = OnceLock::new();

/// The full control plane (with CloudNativePG) and one operator.
async fn setup() -> (&'static ControlPlane, Client) {
    let cp = ControlPlane::full();
    OPERATOR.get_or_init(|| cp.start_operator(&[]));
    (cp, cp.client().await)
}

/// An Organization and an Environment of `tier` owning one namespace, Ready.
async fn tenant_namespace(client: &Client, tier: &str) -> String {
    let name = format!("n-{}", unique());
    organization(&name)
        .create(&Api::<Organization>::all(client.clone()))
        .await;
    let envs: Api<Environment> = Api::all(client.clone());
    environment(&name, &name, tier).create(&envs).await;
    wait_reason(&envs, &name, "Ready", "True", "Available").await;
    name
}

/// A DatabaseCluster with one database `orders`, its owner `app` and a
/// read-only user limited to 5 connections.
fn orders_cluster(name: &str, ns: &str) -> Build<DatabaseCluster> {
    database_cluster(name, ns)
        .spec("databases", json!([{ "name": "orders", "owner": "app" }]))
        .spec(
            "users",
            json!([
                { "name": "app", "databases": ["orders"], "privileges": "owner" },
                { "name": "report_ro", "databases": ["orders"], "privileges": "readOnly", "connectionLimit": 5 },
            ]),
        )
        .connection_secret()
}

async fn create_orders_cluster(client: &Client, ns: &str, name: &str) {
    orders_cluster(name, ns)
        .create(&Api::namespaced(client.clone(), ns))
        .await;
}

/// kwok runs no PostgreSQL, so the pg_hba rules bulkhead writes are tried
/// on a real server instead, in CloudNativePG's layout (its fixed rules,
/// then the Cluster's, then its default `host all all all scram-sha-256`):
/// `report_ro` and `app` reach `orders` and nothing else.
async fn rules_confine_each_user_on_a_real_postgresql(rules: &[String]) {
    let pg = support::postgres::TestPostgres::start_new().await;
    let admin = pg.admin("postgres").await;
    for sql in [
        "CREATE ROLE app LOGIN PASSWORD 'app-pw'",
        "CREATE ROLE report_ro LOGIN PASSWORD 'ro-pw'",
        "CREATE DATABASE orders",
        "CREATE DATABASE other",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    let hba = format!(
        "local all all peer\n{}\nhost all all all scram-sha-256\n",
        rules.join("\n")
    );
    std::fs::write(pg.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    // The reload is asynchronous: wait until the new rules answer.
    let deadline = std::time::Instant::now() + WAIT;
    while pg.connect_as("report_ro", "ro-pw", "other").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "report_ro still reaches database other: {rules:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (user, password) in [("report_ro", "ro-pw"), ("app", "app-pw")] {
        pg.connect_as(user, password, "orders")
            .await
            .unwrap_or_else(|e| panic!("{user} connects to its database orders: {e}"));
        for db in ["other", "postgres"] {
            let refused = pg
                .connect_as(user, password, db)
                .await
                .err()
                .map(|e| format!("{e:?}"));
            assert!(
                refused
                    .as_deref()
                    .is_some_and(|e| e.contains("pg_hba.conf rejects")),
                "{user} must not reach {db}: {refused:?}"
            );
        }
    }
    // Nobody else is affected: the superuser still logs in anywhere.
    pg.admin("other").await;
}

fn secret_text(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|ByteString(b)| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_database_cluster_becomes_a_cloudnativepg_cluster_that_cloudnativepg_runs() {
    let (cp, client) = setup().await;
    let ns = tenant_namespace(&client, "staging").await;
    create_orders_cluster(&client, &ns, "shop").await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);

    // The real CloudNativePG takes it as far as kwok allows: the instance
    // pod runs (simulated) and is counted, but the operator cannot reach
    // its instance manager, and says so; bulkhead shows CloudNativePG's word.
    let d = wait_for(&dbcs, "shop", WAIT, "CloudNativePG's phase on Ready", |d| {
        has_reason(d, "Synced", "True", "ReconcileSuccess")
            && is_true(d, "Provisioned")
            && condition(d.conditions(), "Ready").is_some_and(|r| {
                r.status == "False"
                    && r.message
                        .contains("CloudNativePG: Instance Status Extraction Error")
            })
    })
    .await;
    let status = d.status.clone().unwrap_or_default();
    assert_eq!(status.external_name.as_deref(), Some("shop-stage"));
    assert_eq!(
        status.endpoint.as_ref().map(|e| (e.host.as_str(), e.port)),
        Some((
            format!("shop-stage-rw.{ns}.svc.cluster.local").as_str(),
            5432
        )),
        "the endpoint is CloudNativePG's -rw Service"
    );
    assert_eq!(
        status.replicas.as_ref().map(|r| (r.desired, r.ready)),
        Some((1, 1)),
        "development preset: one instance, counted ready by CloudNativePG"
    );

    // What bulkhead wrote, as CloudNativePG's CRDs and webhooks accepted it.
    let cluster = cnpg::clusters(&client, &ns)
        .get("shop-stage")
        .await
        .expect("Cluster shop-stage");
    let c = json_of(&cluster);
    assert_eq!(c["spec"]["instances"], 1);
    assert_eq!(
        c["spec"]["imageName"],
        "ghcr.io/cloudnative-pg/postgresql:16"
    );
    assert_eq!(c["spec"]["storage"]["size"], "1Gi");
    assert_eq!(c["spec"]["enableSuperuserAccess"], false);
    assert_eq!(
        cluster.owner_references().first().map(|o| o.uid.as_str()),
        d.uid().as_deref(),
        "owned by the DatabaseCluster"
    );
    let roles = c["spec"]["managed"]["roles"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let role = |n: &str| {
        roles
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(role("report_ro")["inRoles"], json!(["pg_read_all_data"]));
    // pg_read_all_data reaches every database a role can connect to, so
    // each user may connect to its own databases only (and CloudNativePG
    // accepted the rules).
    assert_eq!(
        c["spec"]["postgresql"]["pg_hba"],
        json!([
            "host \"orders\" \"app\" all scram-sha-256",
            "host all \"app\" all reject",
            "host \"orders\" \"report_ro\" all scram-sha-256",
            "host all \"report_ro\" all reject",
        ]),
        "{c:#}"
    );
    let rules: Vec<String> =
        serde_json::from_value(c["spec"]["postgresql"]["pg_hba"].clone()).expect("pg_hba lines");
    rules_confine_each_user_on_a_real_postgresql(&rules).await;
    assert_eq!(role("report_ro")["connectionLimit"], 5);
    assert_eq!(role("app")["login"], true);
    // CloudNativePG's mutating webhook ran on what bulkhead wrote.
    assert_eq!(role("app")["inherit"], true);
    assert!(
        c.pointer("/status/certificates/serverTLSSecret").is_some(),
        "CloudNativePG made the Cluster's certificates: {c:#}"
    );

    let databases = cnpg::databases(&client, &ns);
    let db = json_of(
        &databases
            .get("shop-stage-db-orders")
            .await
            .expect("Database"),
    );
    assert_eq!(
        db["spec"],
        json!({ "name": "orders", "owner": "app", "cluster": { "name": "shop-stage" },
                "ensure": "present", "databaseReclaimPolicy": "retain" })
    );

    // Each managed role's password is bulkhead's generated one, in a
    // basic-auth Secret CloudNativePG reloads on rotation.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let generated = secrets
        .get("shop-credentials")
        .await
        .expect("credentials Secret");
    let secret_name = role("report_ro")["passwordSecret"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let role_secret = secrets.get(&secret_name).await.expect("role Secret");
    assert_eq!(
        role_secret.type_.as_deref(),
        Some("kubernetes.io/basic-auth")
    );
    assert_eq!(secret_text(&role_secret, "username"), "report_ro");
    assert_eq!(
        secret_text(&role_secret, "password"),
        secret_text(&generated, "report_ro")
    );
    assert_eq!(
        role_secret
            .labels()
            .get("cnpg.io/reload")
            .map(String::as_str),
        Some("true")
    );

    // The connection Secret points at the -rw Service CloudNativePG made.
    let rw = Api::<Service>::namespaced(client.clone(), &ns)
        .get("shop-stage-rw")
        .await
        .expect("CloudNativePG's -rw Service");
    assert_eq!(
        rw.spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get("cnpg.io/instanceRole").cloned())
            .as_deref(),
        Some("primary")
    );
    let conn = secrets.get("shop-conn").await.expect("connection Secret");
    assert_eq!(
        secret_text(&conn, "host"),
        format!("shop-stage-rw.{ns}.svc.cluster.local")
    );
    assert_eq!(secret_text(&conn, "username"), "app");
    assert_eq!(
        secret_text(&conn, "password"),
        secret_text(&generated, "app")
    );
    assert_eq!(secret_text(&conn, "database"), "orders");

    // Healthy once CloudNativePG says so (written as it would).
    write_healthy_status_as_cloudnativepg_would(&client, &ns, "shop-stage").await;
    let d = wait_reason(&dbcs, "shop", "Ready", "True", "Available").await;
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "-n",
        &ns,
        "dbc/shop",
        "--timeout=10s",
    ]);

    // No password in the DatabaseCluster, its Events or the operator log.
    let shown = format!(
        "{}{}{}",
        serde_json::to_string(&d).unwrap_or_default(),
        cp.kubectl_ok(&["get", "events", "-n", &ns, "-o", "yaml"]),
        OPERATOR.get().map(Operator::log).unwrap_or_default()
    );
    for user in ["app", "report_ro"] {
        let pw = secret_text(&generated, user);
        assert!(pw.len() >= 16 && !shown.contains(&pw), "a password leaked");
    }
}

#[tokio::test]
async fn production_preset_is_three_instances_with_synchronous_replicas() {
    let (_cp, client) = setup().await;
    let ns = tenant_namespace(&client, "production").await;
    create_orders_cluster(&client, &ns, "ledger").await;
    let cluster = wait_for(
        &cnpg::clusters(&client, &ns),
        "ledger",
        WAIT,
        "CloudNativePG picked the Cluster up",
        |c| json_of(c).pointer("/status/phase").is_some(),
    )
    .await;
    let c = json_of(&cluster);
    assert_eq!(
        c["spec"]["instances"], 3,
        "production: no suffix, 3 instances"
    );
    assert_eq!(
        c["spec"]["postgresql"]["synchronous"]["method"], "any",
        "{c:#}"
    );
    assert_eq!(c["spec"]["postgresql"]["synchronous"]["number"], 1);
    assert_eq!(c["spec"]["resources"]["requests"]["memory"], "4Gi");
    let d = wait_for(
        &Api::<DatabaseCluster>::namespaced(client.clone(), &ns),
        "ledger",
        WAIT,
        "replicas reported",
        |d| {
            d.status
                .as_ref()
                .and_then(|s| s.replicas.as_ref())
                .is_some_and(|r| r.desired == 3)
        },
    )
    .await;
    assert!(
        !has_reason(&d, "Ready", "True", "Available"),
        "not Ready while CloudNativePG is still bringing up instances"
    );
}

#[tokio::test]
async fn what_cloudnativepg_refuses_is_reported_with_its_own_message() {
    let (_cp, client) = setup().await;
    let ns = tenant_namespace(&client, "development").await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    database_cluster("reserved", &ns)
        .spec("databases", json!([{ "name": "postgres" }]))
        .without_users()
        .create(&dbcs)
        .await;
    let d = wait_reason(&dbcs, "reserved", "Synced", "False", "InvalidSpec").await;
    let message = message_of(&d, "Synced");
    assert!(
        message.contains("the name postgres is reserved"),
        "CloudNativePG's schema speaks: {message}"
    );
}

#[tokio::test]
async fn drift_on_cloudnativepg_objects_is_repaired() {
    let (_cp, client) = setup().await;
    let ns = tenant_namespace(&client, "staging").await;
    create_orders_cluster(&client, &ns, "drifty").await;
    let clusters = cnpg::clusters(&client, &ns);
    let databases = cnpg::databases(&client, &ns);
    wait_exists(
        &databases,
        "drifty-stage-db-orders",
        WAIT,
        "Database written",
    )
    .await;

    // Someone scales the Cluster and drops a managed role by hand, and
    // deletes a Database object.
    clusters
        .patch(
            "drifty-stage",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "instances": 2, "managed": { "roles": [] } } })),
        )
        .await
        .expect("change the Cluster");
    databases
        .delete("drifty-stage-db-orders", &DeleteParams::default())
        .await
        .expect("delete the Database");

    wait_for(
        &clusters,
        "drifty-stage",
        WAIT,
        "instances and roles restored",
        |c| {
            let c = json_of(c);
            c["spec"]["instances"] == 1
                && c["spec"]["managed"]["roles"]
                    .as_array()
                    .is_some_and(|r| r.len() == 2)
        },
    )
    .await;
    wait_exists(
        &databases,
        "drifty-stage-db-orders",
        WAIT,
        "Database recreated",
    )
    .await;
}

#[tokio::test]
async fn deletion_policy_delete_removes_the_cluster_and_orphan_leaves_it_running() {
    let (_cp, client) = setup().await;
    let ns = tenant_namespace(&client, "staging").await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    for (name, policy) in [("gone", "Delete"), ("kept", "Orphan")] {
        orders_cluster(name, &ns)
            .spec("deletionPolicy", json!(policy))
            .create(&dbcs)
            .await;
    }
    let clusters = cnpg::clusters(&client, &ns);
    let databases = cnpg::databases(&client, &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in ["gone", "kept"] {
        wait_for(&dbcs, name, WAIT, "Provisioned", |d| {
            is_true(d, "Provisioned")
        })
        .await;
        // CloudNativePG made its Services, owned by its Cluster.
        wait_exists(&services, &format!("{name}-stage-rw"), WAIT, "-rw Service").await;
    }
    let role_secret = |name: &str| format!("{name}-stage-role-app");

    for name in ["gone", "kept"] {
        dbcs.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["gone", "kept"] {
        wait_gone(&dbcs, name, WAIT).await;
    }

    // Delete: the Cluster goes, and with it everything CloudNativePG made.
    wait_gone(&clusters, "gone-stage", WAIT).await;
    wait_gone(&databases, "gone-stage-db-orders", WAIT).await;
    wait_gone(&secrets, &role_secret("gone"), WAIT).await;
    wait_gone(&services, "gone-stage-rw", WAIT).await;
    wait_gone(&secrets, "gone-conn", WAIT).await;

    // Orphan: the Cluster keeps running under CloudNativePG, detached.
    tokio::time::sleep(Duration::from_secs(3)).await; // let the garbage collector (wrongly) act
    let kept = clusters
        .get("kept-stage")
        .await
        .expect("orphaned Cluster stays");
    assert!(
        kept.owner_references().is_empty(),
        "{:?}",
        kept.owner_references()
    );
    let db = databases
        .get("kept-stage-db-orders")
        .await
        .expect("orphaned Database stays");
    assert!(db.owner_references().is_empty());
    let s = secrets
        .get(&role_secret("kept"))
        .await
        .expect("role Secret stays");
    assert!(s.owner_references().is_empty());
    assert!(
        exists(&services, "kept-stage-rw").await,
        "CloudNativePG's Service stays with its Cluster"
    );
    let conn = secrets
        .get("kept-conn")
        .await
        .expect("connection Secret stays");
    assert!(conn.owner_references().is_empty());
}

#[tokio::test]
async fn paused_and_observe_only_clusters_are_never_written() {
    let (_cp, client) = setup().await;
    let ns = tenant_namespace(&client, "staging").await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    let clusters = cnpg::clusters(&client, &ns);

    // ObserveOnly with nothing to observe: reported, nothing created.
    orders_cluster("watched", &ns)
        .spec("managementPolicy", json!("ObserveOnly"))
        .create(&dbcs)
        .await;
    wait_reason(&dbcs, "watched", "Synced", "False", "ExternalObjectMissing").await;
    assert!(!exists(&clusters, "watched-stage").await);

    // Paused: a spec change is not carried to the Cluster.
    create_orders_cluster(&client, &ns, "frozen").await;
    wait_exists(&clusters, "frozen-stage", WAIT, "Cluster written").await;
    dbcs.patch(
        "frozen",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "bulkhead.dev/paused": "true" } },
                             "spec": { "size": { "custom": { "cpus": 2, "memoryMiB": 512, "storageGiB": 2, "replicas": 2 } } } })),
    )
    .await
    .expect("pause and resize");
    wait_reason(&dbcs, "frozen", "Synced", "False", "ReconcilePaused").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = json_of(&clusters.get("frozen-stage").await.expect("Cluster"));
    assert_eq!(
        c["spec"]["instances"], 1,
        "a paused cluster is not converged"
    );

    dbcs.patch(
        "frozen",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "bulkhead.dev/paused": null } } })),
    )
    .await
    .expect("unpause");
    wait_for(
        &clusters,
        "frozen-stage",
        WAIT,
        "resized after unpause",
        |c| json_of(c)["spec"]["instances"] == 2,
    )
    .await;
}

/// A control plane without CloudNativePG: the DatabaseCluster says what to
/// install, and converges once CloudNativePG's CRDs are there. (This plane
/// has no manager, so the Cluster is only validated and stored.)
#[tokio::test]
async fn cloudnativepg_not_installed_is_reported_until_its_crds_are_installed() {
    let cp = ControlPlane::apiserver();
    OPERATOR_WITHOUT_CNPG.get_or_init(|| cp.start_operator(&[]));
    let client = cp.client().await;
    let ns = tenant_namespace(&client, "staging").await;
    create_orders_cluster(&client, &ns, "early").await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    let d = wait_reason(
        &dbcs,
        "early",
        "Synced",
        "False",
        "CloudNativePGNotInstalled",
    )
    .await;
    let message = message_of(&d, "Synced");
    assert!(
        message.contains("install CloudNativePG") && message.contains("helm install"),
        "the message says how to install it: {message}"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        !exists(&secrets, "early-stage-role-app").await,
        "nothing is written for CloudNativePG before it is installed"
    );

    cp.install_cnpg_crds();
    wait_for(
        &dbcs,
        "early",
        WAIT,
        "Synced once CloudNativePG is installed",
        |d| {
            has_reason(d, "Synced", "True", "ReconcileSuccess")
                && has_reason(d, "Ready", "False", "Creating")
        },
    )
    .await;
    let cluster = cnpg::clusters(&client, &ns)
        .get("early-stage")
        .await
        .expect("the Cluster, accepted by CloudNativePG's CRD");
    assert_eq!(json_of(&cluster)["spec"]["instances"], 1);
}

#[tokio::test]
async fn a_secret_the_team_made_is_never_overwritten_by_a_role_secret() {
    let (_cp, client) = setup().await;
    let ns = tenant_namespace(&client, "staging").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // The team's own Secret under the name the `app` role's would get.
    create_yaml(
        &secrets,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: taken-stage-role-app}\nstringData: {password: the-teams-own}\n",
    )
    .await;
    create_orders_cluster(&client, &ns, "taken").await;
    let d = wait_reason(
        &Api::<DatabaseCluster>::namespaced(client.clone(), &ns),
        "taken",
        "Synced",
        "False",
        "SecretConflict",
    )
    .await;
    let message = message_of(&d, "Synced");
    assert!(message.contains("taken-stage-role-app"), "{message}");
    let s = secrets
        .get("taken-stage-role-app")
        .await
        .expect("the team's Secret");
    assert_eq!(secret_text(&s, "password"), "the-teams-own", "untouched");
    assert!(
        !exists(&cnpg::clusters(&client, &ns), "taken-stage").await,
        "nothing is created while the conflict stands"
    );
}
