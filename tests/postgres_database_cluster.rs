//! DatabaseClusters on a shared PostgreSQL server, driven end to end by the
//! operator: apply objects, then look at what a user sees — conditions, the
//! connection Secret that really logs in, rows in the copies.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde_json::json;
use support::controlplane::{ControlPlane, Operator, delete_and_wait, unique, wait_for};
use support::objects::{
    WAIT, database_cluster, environment, is_ready, message_of, organization, reason_of, wait_ready,
    wait_reason,
};
use support::postgres::{count, no_rows};

static OPERATOR: OnceLock<Operator> = OnceLock::new();

async fn setup() -> (Client, &'static support::postgres::TestPostgres) {
    let cp = ControlPlane::full();
    OPERATOR.get_or_init(|| cp.start_operator(&[]));
    let pg = support::postgres::shared().await;
    (cp.client().await, pg)
}

/// Namespace the operator reads provider credentials from (its default:
/// the operator's namespace).
const CREDENTIALS_NS: &str = "bulkhead-system";

/// An Organization + Environment of `tier`, owning namespace `name`, whose
/// databases live on `pg`: the admin connection sits in a Secret of the
/// credentials namespace, named by the Environment's databaseProvider.
async fn environment_on(
    client: &Client,
    pg: &support::postgres::TestPostgres,
    tier: &str,
) -> String {
    let name = format!("pg-{}", unique());
    ensure_namespace(client, CREDENTIALS_NS).await;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("admin-{name}"), "namespace": CREDENTIALS_NS},
        "stringData": {"dsn": pg.admin_dsn()},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), CREDENTIALS_NS)
        .create(&Default::default(), &secret)
        .await
        .expect("admin Secret");
    organization(&name)
        .create(&Api::<Organization>::all(client.clone()))
        .await;
    let envs: Api<Environment> = Api::all(client.clone());
    environment(&name, &name, tier)
        .postgres(&format!("admin-{name}"))
        .create(&envs)
        .await;
    wait_ready(&envs, &name).await;
    name
}

async fn ensure_namespace(client: &Client, name: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    match namespaces.create(&Default::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// A DatabaseCluster in `ns` with database `app`, a readWrite and a
/// readOnly user, and its connection Secret `<name>-conn`.
fn app_cluster(name: &str, ns: &str) -> support::objects::Build<DatabaseCluster> {
    database_cluster(name, ns).with_reader().connection_secret()
}

fn secret_value(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn connection_secret_logs_in_with_least_privilege() {
    let (client, pg) = setup().await;
    let ns = environment_on(&client, pg, "staging").await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    app_cluster("orders", &ns).create(&dbcs).await;
    let d = wait_ready(&dbcs, "orders").await;
    let status = d.status.unwrap_or_default();
    assert_eq!(status.external_name.as_deref(), Some("orders-stage"));
    assert_eq!(status.provider.as_deref(), Some("postgres"));

    let conn = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("orders-conn")
        .await
        .expect("connection Secret");
    let (user, password, db) = (
        secret_value(&conn, "username"),
        secret_value(&conn, "password"),
        secret_value(&conn, "database"),
    );
    assert_eq!(user, "orders_stage_app_rw");
    assert_eq!(db, "orders_stage_app");
    assert_eq!(secret_value(&conn, "port"), pg.port().to_string());
    assert!(secret_value(&conn, "uri").starts_with("postgresql://orders_stage_app_rw:"));
    // The Secret's credentials really work, with readWrite and nothing more.
    let c = pg
        .connect_as(&user, &password, &db)
        .await
        .expect("log in with the connection Secret");
    assert!(
        c.batch_execute("CREATE TABLE t (id int)").await.is_err(),
        "readWrite cannot create tables"
    );
    c.batch_execute("SELECT 1").await.expect("a session works");
    // The other users' generated passwords sit in the credentials Secret:
    // the readOnly user reads but cannot write.
    let creds = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("orders-credentials")
        .await
        .expect("credentials Secret");
    let ro = pg
        .connect_as("orders_stage_app_ro", &secret_value(&creds, "app_ro"), &db)
        .await
        .expect("readOnly login");
    c.batch_execute("SET ROLE NONE").await.expect("reset");
    let owner = pg.admin(&db).await;
    owner.batch_execute("SET ROLE orders_stage_owner; CREATE TABLE items (id int); INSERT INTO items VALUES (1)").await.expect("owner creates a table");
    assert_eq!(
        count(&ro, "SELECT count(*) FROM items").await,
        1,
        "readOnly reads new tables"
    );
    assert!(
        ro.batch_execute("INSERT INTO items VALUES (2)")
            .await
            .is_err(),
        "readOnly cannot write"
    );
    c.batch_execute("INSERT INTO items VALUES (3)")
        .await
        .expect("readWrite writes");
    // The password is not in status or events.
    let yaml =
        serde_yaml_ng::to_string(&dbcs.get("orders").await.expect("get")).unwrap_or_default();
    assert!(!yaml.contains(&password), "password leaked into the object");

    // Delete (the default policy) drops the database and roles.
    delete_and_wait(&dbcs, "orders", WAIT).await;
    let admin = pg.admin("postgres").await;
    assert!(no_rows(&admin, "SELECT 1 FROM pg_database WHERE datname = 'orders_stage_app' UNION ALL SELECT 1 FROM pg_roles WHERE rolname LIKE 'orders\\_stage\\_%'").await, "database and roles dropped");
}

#[tokio::test]
async fn production_is_copied_into_staging_without_sensitive_data() {
    let (client, pg) = setup().await;
    // Production never shares a database server with another tier: its own
    // server, and the copy reads it over its own admin connection.
    let prod_pg = support::postgres::TestPostgres::start_new().await;
    let prod = environment_on(&client, &prod_pg, "production").await;
    let stage = environment_on(&client, pg, "staging").await;
    let prod_dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &prod);
    let stage_dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &stage);
    // Production consents to copies into this staging Environment, and
    // requires that the audit log never leaves.
    app_cluster("shop", &prod)
        .spec("deletionPolicy", json!("Delete"))
        .spec(
            "copyPolicy",
            json!({ "allowedEnvironments": [stage], "sanitize": { "excludeTables": ["audit_log"] } }),
        )
        .create(&prod_dbcs)
        .await;
    wait_for(&prod_dbcs, "shop", WAIT, "source Ready", is_ready).await;

    // Production data, written as the database's owner would.
    let admin = prod_pg.admin("shop_app").await;
    admin
        .batch_execute(
            "SET ROLE shop_owner;
             CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, ssn text, name text);
             CREATE TABLE audit_log (id int, entry text);
             INSERT INTO customers SELECT g, 'user' || g || '@real.example', '123-45-' || g, 'Real Name ' || g FROM generate_series(1, 50) g;
             INSERT INTO audit_log VALUES (1, 'secret');",
        )
        .await
        .expect("seed production");

    // The consumer masks the columns; it does not repeat the source's
    // exclusion, which applies anyway.
    app_cluster("shop", &stage)
        .spec(
            "source",
            json!({
                "clusterRef": { "name": "shop", "namespace": prod },
                "mode": "Sanitized",
                "sanitize": { "columns": { "customers.email": "hash", "customers.ssn": "redact", "customers.name": "null" } },
            }),
        )
        .spec("copyPolicy", json!({ "allowedEnvironments": [prod] }))
        .create(&stage_dbcs)
        .await;
    let d = wait_for(&stage_dbcs, "shop", WAIT, "copy done", |d| {
        is_ready(d) && d.status.as_ref().is_some_and(|s| s.copy.is_some())
    })
    .await;
    let copy = d.status.and_then(|s| s.copy).expect("copy status");
    assert_eq!(copy.rows, 50, "every customer row copied");
    assert_eq!(copy.tables, 1, "audit_log excluded");

    let copied = pg.admin("shop_stage_app").await;
    let rows = copied
        .query("SELECT email, ssn, name FROM customers", &[])
        .await
        .expect("read the copy");
    assert_eq!(rows.len(), 50);
    for row in &rows {
        let email: String = row.get(0);
        let ssn: Option<String> = row.get(1);
        let name: Option<String> = row.get(2);
        assert!(!email.contains("@real.example"), "email hashed: {email}");
        assert!(
            ssn.as_deref().is_none_or(|s| !s.starts_with("123-45-")),
            "ssn redacted"
        );
        assert!(name.is_none(), "name nulled");
    }
    assert!(
        no_rows(
            &copied,
            "SELECT 1 FROM pg_tables WHERE tablename = 'audit_log'"
        )
        .await,
        "excluded table absent"
    );

    // The staging app user reads the copy with the connection Secret.
    let conn = Api::<Secret>::namespaced(client.clone(), &stage)
        .get("shop-conn")
        .await
        .expect("conn");
    let app = pg
        .connect_as(
            &secret_value(&conn, "username"),
            &secret_value(&conn, "password"),
            &secret_value(&conn, "database"),
        )
        .await
        .expect("login");
    assert_eq!(count(&app, "SELECT count(*) FROM customers").await, 50);

    // Copies never flow upward: production from staging is refused.
    app_cluster("upward", &prod)
        .spec(
            "source",
            json!({ "clusterRef": { "name": "shop", "namespace": stage }, "mode": "SchemaOnly" }),
        )
        .create(&prod_dbcs)
        .await;
    let refused = wait_for(&prod_dbcs, "upward", WAIT, "CopyUpward", |d| {
        reason_of(d, "Synced").as_deref() == Some("CopyUpward")
    })
    .await;
    let message = message_of(&refused, "Synced");
    assert!(
        message.contains("staging") && message.contains("production"),
        "{message}"
    );
}

#[tokio::test]
async fn passwords_rotate_on_schedule() {
    let (client, pg) = setup().await;
    let ns = environment_on(&client, pg, "development").await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    app_cluster("rot", &ns)
        .spec("passwordRotation", json!({ "interval": "1m" }))
        .create(&dbcs)
        .await;
    let first = wait_ready(&dbcs, "rot").await;
    let rotated_at = first
        .status
        .and_then(|s| s.password_rotated_at)
        .expect("passwordRotatedAt");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let conn = secrets.get("rot-conn").await.expect("conn");
    let (user, old, db) = (
        secret_value(&conn, "username"),
        secret_value(&conn, "password"),
        secret_value(&conn, "database"),
    );
    pg.connect_as(&user, &old, &db)
        .await
        .expect("old password works before rotation");

    wait_for(&dbcs, "rot", Duration::from_secs(150), "rotated", |d| {
        is_ready(d)
            && d.status
                .as_ref()
                .and_then(|s| s.password_rotated_at.clone())
                .is_some_and(|t| t != rotated_at)
    })
    .await;
    let conn = wait_for(&secrets, "rot-conn", WAIT, "Secret updated", |s| {
        secret_value(s, "password") != old
    })
    .await;
    let new = secret_value(&conn, "password");
    pg.connect_as(&user, &new, &db)
        .await
        .expect("new password works");
    assert!(
        pg.connect_as(&user, &old, &db).await.is_err(),
        "old password refused"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_reported_and_recovers() {
    let (client, pg) = setup().await;
    // A private server this test may stop.
    let _ = pg;
    let private = support::postgres::TestPostgres::start_new().await;
    let ns = environment_on(&client, &private, "development").await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    app_cluster("flaky", &ns).create(&dbcs).await;
    wait_ready(&dbcs, "flaky").await;

    private.stop();
    // A spec change makes the operator look while the server is down.
    dbcs.patch(
        "flaky",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"users": [
            {"name": "app_rw", "databases": ["app"], "privileges": "readWrite"},
            {"name": "app_ro", "databases": ["app"], "privileges": "readOnly"},
            {"name": "extra", "databases": ["app"], "privileges": "readOnly"}
        ]}})),
    )
    .await
    .expect("change spec");
    wait_reason(&dbcs, "flaky", "Synced", "False", "ProviderUnavailable").await;

    private.start();
    wait_for(
        &dbcs,
        "flaky",
        Duration::from_secs(150),
        "recovered by itself",
        is_ready,
    )
    .await;
    let roles = private
        .admin("postgres")
        .await
        .query(
            "SELECT 1 FROM pg_roles WHERE rolname = 'flaky_dev_extra'",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(
        roles.len(),
        1,
        "the change made while the server was down is applied"
    );

    // Neither the outage nor the recovery put the admin password anywhere
    // a user or a log pipeline sees: the operator's text log, Events, status.
    let cp = ControlPlane::full();
    let haystacks = [
        OPERATOR.get().map(Operator::log).unwrap_or_default(),
        cp.kubectl_ok(&["get", "events", "-A", "-o", "json"]),
        cp.kubectl_ok(&["get", "org,env,dbc", "-A", "-o", "json"]),
    ];
    for haystack in &haystacks {
        assert!(!haystack.is_empty());
        assert!(
            !haystack.contains(private.admin_password()),
            "the admin password leaked"
        );
    }
}
