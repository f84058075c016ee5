//! DatabaseClusters in an Environment of a Fly Organization, as Fly
//! Managed Postgres clusters (`/v1/postgres`), against the Fly emulator and
//! the real local control plane. What is asserted is what a user sees:
//! conditions and the connection Secret in the apiserver, and the
//! clusters, databases, users and passwords the emulator holds.

mod support;

use std::time::Duration;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::controlplane::{unique, wait_for, wait_gone};
use support::fly::{
    ADMIN_TOKEN, CREDENTIALS, FAULTS, assert_no_secret_leaked, clear_faults, counters, emulator,
    fly_org, http, inject_faults, poll, provider, put_credentials, state, wait_until,
};
use support::objects::{
    WAIT, database_cluster, environment, is_ready, message_of, reason_of, wait_reason,
};

/// The emulator's live (not deleted) Managed Postgres clusters named
/// `name` in the organization Fly knows as `slug`.
async fn clusters_named(slug: &str, name: &str) -> Vec<Value> {
    let state = state().await;
    let org_id = state["organizations"]
        .as_object()
        .and_then(|m| m.values().find(|o| o["slug"] == slug))
        .map(|o| o["id"].clone())
        .unwrap_or(Value::Null);
    state["postgres_clusters"]
        .as_object()
        .map(|m| {
            m.values()
                .filter(|c| c["org_id"] == org_id && c["name"] == name && c["deleted_at"].is_null())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

async fn the_cluster(slug: &str, name: &str) -> Value {
    let mut found = clusters_named(slug, name).await;
    assert_eq!(
        found.len(),
        1,
        "exactly one cluster {name} in {slug} at Fly: {found:?}"
    );
    found.remove(0)
}

/// The password Fly issued to `user`, as its owner reads it from Fly
/// (`Postgres_users_credentials`); None while the user does not exist.
async fn issued_password(cluster: &Value, user: &str) -> Option<String> {
    let id = cluster["id"].as_str()?;
    let resp = http()
        .get(format!(
            "{}/v1/postgres/{id}/users/{user}/credentials",
            emulator()
        ))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .ok()?;
    let body: Value = resp.json().await.ok()?;
    body["data"]["password"].as_str().map(str::to_string)
}

/// The Fly role of each user of a cluster.
fn roles(cluster: &Value) -> Vec<(String, String)> {
    cluster["users"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(n, u)| (n.clone(), u["role"].as_str().unwrap_or_default().into()))
                .collect()
        })
        .unwrap_or_default()
}

fn databases(cluster: &Value) -> Vec<String> {
    cluster["databases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A call to the Machines API as someone other than bulkhead (the admin
/// token): drift made behind its back.
async fn machines(method: reqwest::Method, path: &str, body: Option<Value>) {
    let mut req = http()
        .request(method, format!("{}{path}", emulator()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("Machines API");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
}

fn secret_value(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

/// A Fly Organization `name` and its staging Environment `<name>-staging`
/// (owning the namespace of that name), the Environment Ready; returns
/// the Environment's name (its namespace) and the slug Fly gave the
/// organization.
async fn fly_staging(
    client: &Client,
    name: &str,
    database_provider: Option<Value>,
) -> (String, String) {
    let orgs: Api<Organization> = Api::all(client.clone());
    let envs: Api<Environment> = Api::all(client.clone());
    fly_org(name, CREDENTIALS)
        .spec("deletionPolicy", json!("Delete"))
        .create(&orgs)
        .await;
    let env_name = format!("{name}-staging");
    let mut env = environment(&env_name, name, "staging");
    if let Some(p) = database_provider {
        env = env.spec("databaseProvider", p);
    }
    env.create(&envs).await;
    wait_for(&envs, &env_name, WAIT, "Environment Ready", is_ready).await;
    let slug = orgs
        .get(name)
        .await
        .expect("organization")
        .status
        .and_then(|s| s.slug)
        .expect("Fly's slug in status");
    (env_name, slug)
}

/// Deletes what [`fly_staging`] made.
async fn tear_down(client: &Client, name: &str) {
    let envs: Api<Environment> = Api::all(client.clone());
    let orgs: Api<Organization> = Api::all(client.clone());
    let env_name = format!("{name}-staging");
    let _ = envs.delete(&env_name, &DeleteParams::default()).await;
    wait_gone(&envs, &env_name, WAIT).await;
    let _ = orgs.delete(name, &DeleteParams::default()).await;
    wait_gone(&orgs, name, WAIT).await;
}

#[tokio::test]
async fn a_managed_cluster_is_created_for_the_stage_converged_and_deleted() {
    let (_cp, client) = support::fly::setup(&[]).await;
    let _faults = FAULTS.read().await;
    let name = format!("mpg-{}", unique());
    let (ns, slug) = fly_staging(&client, &name, None).await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    database_cluster("orders", &ns)
        .with_reader()
        .connection_secret()
        .spec("version", json!("17"))
        .spec("regions", json!(["ams"]))
        .spec(
            "size",
            json!({ "custom": { "cpus": 2, "memoryMiB": 4096, "storageGiB": 20, "replicas": 1 } }),
        )
        .create(&dbcs)
        .await;

    // Named for the stage, in the Environment's Fly organization, sized by
    // the plan that covers 2 CPUs and 4 GiB; Ready once Fly says `ready`.
    let dbc = wait_for(&dbcs, "orders", WAIT, "Ready", is_ready).await;
    // (the_cluster looks in the Environment's Fly organization only)
    let cluster = the_cluster(&slug, "orders-stage").await;
    assert_eq!(
        (
            &cluster["plan"],
            &cluster["region"],
            &cluster["pg_major_version"],
            &cluster["disk_size_gb"],
        ),
        (&json!("launch"), &json!("ams"), &json!("17"), &json!(20)),
    );
    let status = dbc.status.clone().unwrap_or_default();
    let cluster_id = cluster["id"].as_str().expect("cluster id").to_string();
    let pooler = format!("pgbouncer.{cluster_id}.pg.flympg.net");
    assert_eq!(
        status.endpoint.as_ref().map(|e| (e.host.as_str(), e.port)),
        Some((pooler.as_str(), 5432)),
        "the pooler endpoint"
    );

    // Its databases and users, each with the Fly role of its privileges.
    wait_until("database and users at Fly", || async {
        let c = the_cluster(&slug, "orders-stage").await;
        databases(&c).contains(&"app".to_string()) && roles(&c).len() == 2
    })
    .await;
    let cluster = the_cluster(&slug, "orders-stage").await;
    assert_eq!(
        roles(&cluster),
        [
            ("app_ro".to_string(), "reader".to_string()),
            ("app_rw".to_string(), "writer".to_string())
        ]
    );

    // The connection Secret carries the password Fly issued to app_rw.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let issued = issued_password(&cluster, "app_rw")
        .await
        .expect("Fly issued a password");
    let conn = poll("the connection Secret", || async {
        secrets
            .get_opt("orders-conn")
            .await
            .ok()
            .flatten()
            .filter(|s| secret_value(s, "password") == issued)
    })
    .await;
    assert_eq!(
        (
            secret_value(&conn, "host"),
            secret_value(&conn, "port"),
            secret_value(&conn, "username"),
            secret_value(&conn, "database"),
        ),
        (pooler.clone(), "5432".into(), "app_rw".into(), "app".into())
    );
    assert_eq!(
        secret_value(&conn, "uri"),
        format!("postgresql://app_rw:{issued}@{pooler}:5432/app")
    );

    // Drift at Fly: a user dropped and a database added behind bulkhead's
    // back are put back as the spec says on the next resync.
    let base = format!("/v1/postgres/{cluster_id}");
    machines(
        reqwest::Method::DELETE,
        &format!("{base}/users/app_ro"),
        None,
    )
    .await;
    machines(
        reqwest::Method::POST,
        &format!("{base}/databases"),
        Some(json!({ "name": "stray" })),
    )
    .await;
    wait_until("drift repaired", || async {
        let c = the_cluster(&slug, "orders-stage").await;
        roles(&c).len() == 2 && !databases(&c).contains(&"stray".to_string())
    })
    .await;

    // A spec change: app_ro becomes readWrite, so its Fly role is writer.
    dbcs.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "users": [
            { "name": "app_rw", "databases": ["app"], "privileges": "readWrite" },
            { "name": "app_ro", "databases": ["app"], "privileges": "readWrite" },
        ] } })),
    )
    .await
    .expect("change privileges");
    wait_until("app_ro is a writer at Fly", || async {
        roles(&the_cluster(&slug, "orders-stage").await)
            .iter()
            .all(|(_, role)| role == "writer")
    })
    .await;
    assert_eq!(
        clusters_named(&slug, "orders-stage").await.len(),
        1,
        "never a second cluster"
    );

    // The credentials Secret holds what Fly issued to each user, too.
    let cluster = the_cluster(&slug, "orders-stage").await;
    let mut passwords = Vec::new();
    for user in ["app_rw", "app_ro"] {
        let issued = issued_password(&cluster, user).await.expect("issued");
        let stored = poll("the issued password stored", || async {
            secrets
                .get_opt("orders-credentials")
                .await
                .ok()
                .flatten()
                .filter(|s| secret_value(s, user) == issued)
        })
        .await;
        assert_eq!(secret_value(&stored, user), issued);
        passwords.push(issued);
    }

    // No password in status, the log or Events.
    let object = serde_json::to_string(&dbcs.get("orders").await.expect("get")).unwrap_or_default();
    for p in &passwords {
        assert!(!object.contains(p.as_str()), "a password is in the object");
    }
    assert_no_secret_leaked(&client, &passwords).await;

    // deletionPolicy Delete (the default): the cluster goes at Fly.
    dbcs.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&dbcs, "orders", WAIT).await;
    assert!(
        clusters_named(&slug, "orders-stage").await.is_empty(),
        "deleted at Fly"
    );
    tear_down(&client, &name).await;
}

#[tokio::test]
async fn orphan_leaves_the_cluster_and_bad_input_is_reported_with_nothing_created() {
    let (_cp, client) = support::fly::setup(&[]).await;
    let _faults = FAULTS.read().await;
    let name = format!("mpg-bad-{}", unique());
    let (ns, slug) = fly_staging(&client, &name, None).await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);

    // A major Fly does not offer: terminal, says which it offers.
    database_cluster("old", &ns)
        .spec("version", json!("15"))
        .create(&dbcs)
        .await;
    let old = wait_reason(&dbcs, "old", "Synced", "False", "UnsupportedVersion").await;
    let message = message_of(&old, "Synced");
    assert!(message.contains("16 and 17"), "{message}");
    assert!(
        clusters_named(&slug, "old-stage").await.is_empty(),
        "nothing created"
    );

    // Orphan: deleting the object leaves the cluster at Fly.
    database_cluster("kept", &ns)
        .spec("deletionPolicy", json!("Orphan"))
        .create(&dbcs)
        .await;
    wait_for(&dbcs, "kept", WAIT, "Ready", is_ready).await;
    for n in ["old", "kept"] {
        dbcs.delete(n, &DeleteParams::default())
            .await
            .expect("delete");
        wait_gone(&dbcs, n, WAIT).await;
    }
    assert_eq!(
        clusters_named(&slug, "kept-stage").await.len(),
        1,
        "Orphan keeps it"
    );
    tear_down(&client, &name).await;
}

#[tokio::test]
async fn wrong_database_credentials_and_the_flex_form_are_reported_by_name() {
    let (_cp, client) = support::fly::setup(&[]).await;
    let _faults = FAULTS.read().await;
    let name = format!("mpg-creds-{}", unique());
    let bad = format!("bad-{name}");
    let bad_token = format!("not-a-valid-token-{name}");
    put_credentials(&client, &bad, &bad_token).await;
    let (ns, slug) = fly_staging(&client, &name, Some(provider(&bad))).await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    database_cluster("orders", &ns).create(&dbcs).await;
    let dbc = wait_reason(&dbcs, "orders", "Synced", "False", "CredentialsRejected").await;
    let message = message_of(&dbc, "Synced");
    assert!(message.contains(&bad), "names the Secret: {message}");
    assert!(
        !message.contains(&bad_token),
        "the message carries the token"
    );
    assert!(
        clusters_named(&slug, "orders-stage").await.is_empty(),
        "nothing created"
    );
    assert_no_secret_leaked(&client, &[bad_token]).await;

    // The `fly postgres create` form is refused by name, not half-built.
    let envs: Api<Environment> = Api::all(client.clone());
    let mut flex = provider(CREDENTIALS);
    flex["fly"] = json!({ "postgres": "Flex" });
    envs.patch(
        &ns,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "databaseProvider": flex } })),
    )
    .await
    .expect("switch to Flex");
    let dbc = wait_reason(&dbcs, "orders", "Synced", "False", "Unsupported").await;
    assert!(message_of(&dbc, "Synced").contains("Flex"));
    assert!(
        clusters_named(&slug, "orders-stage").await.is_empty(),
        "nothing created"
    );
    dbcs.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&dbcs, "orders", WAIT).await;
    tear_down(&client, &name).await;
}

/// Under 20% 503s and 10% 429s on every Managed Postgres call (Create is
/// not idempotent, so a lost answer must not make a second cluster), the
/// cluster converges with its database and user, and exactly one cluster
/// is at Fly.
#[tokio::test]
async fn converges_under_injected_5xx_and_429_with_exactly_one_cluster() {
    let (_cp, client) = support::fly::setup(&[]).await;
    let name = format!("mpg-faulty-{}", unique());
    let (ns, slug) = fly_staging(&client, &name, None).await;
    let _faults = FAULTS.write().await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    inject_faults("/v1/postgres", 0.2, 0.1).await;
    database_cluster("orders", &ns)
        .connection_secret()
        .create(&dbcs)
        .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let converged = tokio::time::timeout(
        Duration::from_secs(120),
        poll("Ready with its user and connection Secret", || async {
            let dbc = dbcs.get_opt("orders").await.ok()??;
            let conn = secrets.get_opt("orders-conn").await.ok()??;
            let c = clusters_named(&slug, "orders-stage").await.pop()?;
            let issued = issued_password(&c, "app_rw").await?;
            (is_ready(&dbc) && secret_value(&conn, "password") == issued).then_some(())
        }),
    )
    .await;
    let counters = counters().await;
    clear_faults().await;
    assert!(
        converged.is_ok(),
        "did not converge under faults; counters: {counters}; Synced: {:?}",
        dbcs.get_opt("orders")
            .await
            .ok()
            .flatten()
            .and_then(|d| reason_of(&d, "Synced"))
    );
    assert!(
        counters["faults_injected"]["error"].as_u64().unwrap_or(0) > 0,
        "no 5xx was injected: {counters}"
    );
    assert_eq!(
        clusters_named(&slug, "orders-stage").await.len(),
        1,
        "exactly one cluster"
    );
    dbcs.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&dbcs, "orders", WAIT).await;
    tear_down(&client, &name).await;
}
