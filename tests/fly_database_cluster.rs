//! DatabaseClusters in an Environment of a Fly Organization, as Fly
//! Managed Postgres clusters (`/v1/postgres`), against the Fly emulator and
//! the real local control plane. What is asserted is what a user sees:
//! conditions and the connection Secret in the apiserver, and the
//! clusters, databases, users and passwords the emulator holds.

mod support;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::controlplane::{delete_and_wait, unique, wait_for, wait_gone};
use support::fly::{
    ADMIN_TOKEN, CREDENTIALS, FAULTS, assert_no_secret_leaked, converged_under_faults, counters,
    emulator, fly_org, http, inject_faults, poll, provider, put_credentials, state, wait_until,
};
use support::objects::{
    Build, WAIT, database_cluster, environment, is_ready, is_true, message_of, wait_reason,
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
/// (`Postgres_users_credentials`); None while the user does not exist or
/// the read is rate limited (the operator reads the same bucket), so
/// callers `poll` it.
async fn issued_password(cluster: &Value, user: &str) -> Option<String> {
    let id = cluster["id"].as_str()?;
    let body = as_admin(&format!("/v1/postgres/{id}/users/{user}/credentials")).await?;
    body["data"]["password"].as_str().map(str::to_string)
}

/// GET `path` of Fly's API as the admin; None when it does not answer JSON.
async fn as_admin(path: &str) -> Option<Value> {
    http()
        .get(format!("{}{path}", emulator()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
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
    env_spec: impl FnOnce(Build<Environment>) -> Build<Environment>,
) -> (String, String) {
    let orgs: Api<Organization> = Api::all(client.clone());
    let envs: Api<Environment> = Api::all(client.clone());
    fly_org(name, CREDENTIALS)
        .spec("deletionPolicy", json!("Delete"))
        .create(&orgs)
        .await;
    let env_name = format!("{name}-staging");
    env_spec(environment(&env_name, name, "staging"))
        .create(&envs)
        .await;
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

/// `spec.version` moved from major `running` to `other`: a terminal
/// `MajorVersionFixed` that names both (Fly upgrades neither form in
/// place); set back, the cluster is Synced again.
async fn a_major_change_is_refused(
    dbcs: &Api<DatabaseCluster>,
    name: &str,
    running: &str,
    other: &str,
) {
    let version = |v: &str| Patch::Merge(json!({ "spec": { "version": v } }));
    dbcs.patch(name, &PatchParams::default(), &version(other))
        .await
        .expect("ask for another major");
    let dbc = wait_reason(dbcs, name, "Synced", "False", "MajorVersionFixed").await;
    let message = message_of(&dbc, "Synced");
    assert!(
        message.contains(&format!("runs PostgreSQL {running}"))
            && message.contains(&format!("asks for {other}")),
        "{message}"
    );
    dbcs.patch(name, &PatchParams::default(), &version(running))
        .await
        .expect("back to the running major");
    wait_for(dbcs, name, WAIT, "Synced again", |d: &DatabaseCluster| {
        is_true(d, "Synced") && is_ready(d)
    })
    .await;
}

#[tokio::test]
async fn a_managed_cluster_is_created_for_the_stage_converged_and_deleted() {
    let (_cp, client) = support::fly::setup(&[]).await;
    let _faults = FAULTS.read().await;
    let name = format!("mpg-{}", unique());
    let (ns, slug) = fly_staging(&client, &name, |e| e).await;
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
    let issued = poll("Fly issued a password", || {
        issued_password(&cluster, "app_rw")
    })
    .await;
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
    // Another major: refused, nothing changed at Fly.
    a_major_change_is_refused(&dbcs, "orders", "17", "16").await;
    let cluster = the_cluster(&slug, "orders-stage").await;
    assert_eq!(cluster["pg_major_version"], "17");
    assert_eq!(
        clusters_named(&slug, "orders-stage").await.len(),
        1,
        "never a second cluster"
    );

    // The credentials Secret holds what Fly issued to each user, too.
    let cluster = the_cluster(&slug, "orders-stage").await;
    let mut passwords = Vec::new();
    for user in ["app_rw", "app_ro"] {
        let issued = poll("Fly issued a password", || issued_password(&cluster, user)).await;
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
    delete_and_wait(&dbcs, "orders", WAIT).await;
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
    let (ns, slug) = fly_staging(&client, &name, |e| e).await;
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
        delete_and_wait(&dbcs, n, WAIT).await;
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
    let (ns, slug) = fly_staging(&client, &name, |e| {
        e.spec("databaseProvider", provider(&bad))
    })
    .await;
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
    delete_and_wait(&dbcs, "orders", WAIT).await;
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
    let (ns, slug) = fly_staging(&client, &name, |e| e).await;
    let _faults = FAULTS.write().await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let before = counters().await;
    inject_faults("/v1/postgres", 0.2, 0.1).await;
    database_cluster("orders", &ns)
        .connection_secret()
        .create(&dbcs)
        .await;
    converged_under_faults(
        &before,
        "Ready with its user and connection Secret",
        || async {
            let dbc = dbcs.get_opt("orders").await.ok()??;
            let conn = secrets.get_opt("orders-conn").await.ok()??;
            let c = clusters_named(&slug, "orders-stage").await.pop()?;
            let issued = issued_password(&c, "app_rw").await?;
            (is_ready(&dbc) && secret_value(&conn, "password") == issued).then_some(())
        },
    )
    .await;
    // (Fly's own rate limits are not asserted here: this test's polling
    // of the users' credentials shares their buckets with bulkhead. The
    // flex fault test, which polls only the emulator's state, asserts it.)
    assert_eq!(
        clusters_named(&slug, "orders-stage").await.len(),
        1,
        "exactly one cluster"
    );
    delete_and_wait(&dbcs, "orders", WAIT).await;
    tear_down(&client, &name).await;
}

/// `passwordRotation` on a backend that issues passwords: when it comes
/// due, Fly is asked for a new password (`Postgres_users_rotate_password`)
/// and the connection Secret follows; the old password no longer is Fly's.
#[tokio::test]
async fn rotation_has_fly_issue_a_new_password_and_the_secret_follows() {
    let (_cp, client) = support::fly::setup(&[]).await;
    let _faults = FAULTS.read().await;
    let name = format!("mpg-rot-{}", unique());
    let (ns, slug) = fly_staging(&client, &name, |e| e).await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    database_cluster("orders", &ns)
        .connection_secret()
        .spec("passwordRotation", json!({ "interval": "1m" }))
        .create(&dbcs)
        .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let published = |wanted: String| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt("orders-conn")
                .await
                .ok()
                .flatten()
                .filter(|s| secret_value(s, "password") == wanted)
        }
    };
    let cluster = poll("the cluster at Fly", || async {
        clusters_named(&slug, "orders-stage").await.pop()
    })
    .await;
    let first = poll("app_rw issued", || issued_password(&cluster, "app_rw")).await;
    poll("the first password published", || published(first.clone())).await;
    // Due a minute after the first; `poll` waits up to WAIT (90 s). Watched
    // in the emulator's state, not by reading the credentials: those reads
    // share Fly's 1/s bucket with the operator's own.
    let id = cluster["id"].as_str().expect("cluster id").to_string();
    wait_until("a rotation at Fly", || async {
        state().await["postgres_clusters"][&id]["users"]["app_rw"]["rotations"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })
    .await;
    let rotated = poll("the new password", || issued_password(&cluster, "app_rw")).await;
    assert_ne!(rotated, first, "Fly issued a new password");
    poll("the new password published", || published(rotated.clone())).await;
    assert_eq!(
        counters().await["requests_by_operation"]["Postgres_users_rotate_password"]
            .as_u64()
            .map(|n| n >= 1),
        Some(true),
        "rotated through Fly's API"
    );
    delete_and_wait(&dbcs, "orders", WAIT).await;
    tear_down(&client, &name).await;
}

/// The value of app secret `name` at Fly, read as an admin would
/// (`show_secrets`).
async fn app_secret(app: &str, name: &str) -> String {
    let secret = as_admin(&format!("/v1/apps/{app}/secrets/{name}?show_secrets=true"))
        .await
        .expect("Secret_get answers JSON");
    secret["value"].as_str().unwrap_or_default().to_string()
}

/// `fly.postgres: Flex`: the cluster `fly postgres create` builds, from an
/// app on the Environment's Fly network, a Flycast address, the secrets
/// postgres-flex boots with, and one volume and machine per node. A node
/// destroyed behind bulkhead's back is made again on its volume; a network
/// changed later is `NetworkFixed` on the Environment, never a second app.
#[tokio::test]
async fn a_flex_cluster_is_built_from_machines_on_the_environments_network() {
    let (_cp, client) = support::fly::setup(&[]).await;
    let _faults = FAULTS.read().await;
    let name = format!("flex-{}", unique());
    let network = format!("{name}-net");
    let mut flex = provider(CREDENTIALS);
    flex["fly"] = json!({ "postgres": "Flex" });
    let (ns, slug) = fly_staging(&client, &name, |e| {
        e.spec("databaseProvider", flex)
            .spec("network", json!({ "name": network }))
    })
    .await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    database_cluster("ledger", &ns)
        .without_users()
        .spec("databases", json!([]))
        .connection_secret()
        .spec(
            "size",
            json!({ "custom": { "cpus": 1, "memoryMiB": 1024, "storageGiB": 10, "replicas": 2 } }),
        )
        .create(&dbcs)
        .await;
    let dbc = wait_for(&dbcs, "ledger", WAIT, "Ready", is_ready).await;
    let app_name = "ledger-stage";
    let app = |state: &Value| state["apps"][app_name].clone();
    let at_fly = app(&state().await);
    let org_id = state().await["organizations"]
        .as_object()
        .and_then(|m| m.values().find(|o| o["slug"] == slug.as_str()))
        .map(|o| o["id"].clone());
    assert_eq!(
        Some(at_fly["org_id"].clone()),
        org_id,
        "in the Environment's org"
    );
    assert_eq!(
        at_fly["network"],
        network.as_str(),
        "on the Environment's network"
    );
    let ips = at_fly["ips"].as_array().cloned().unwrap_or_default();
    assert!(
        ips.iter().any(|ip| ip["ip_type"] == "private_v6"),
        "a Flycast address: {ips:?}"
    );
    let secrets: Vec<&String> = at_fly["secrets"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        secrets,
        [
            "FLY_CONSUL_URL",
            "OPERATOR_PASSWORD",
            "REPL_PASSWORD",
            "SSH_CERT",
            "SSH_KEY",
            "SU_PASSWORD"
        ]
    );
    // SSH_CERT holds the one certificate Fly issued in this org, for this
    // app and flyctl's principals (the emulator records it by digest).
    let state_now = state().await;
    let issued: Vec<&Value> = state_now["ssh_certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["app_names"] == json!([app_name]))
        .collect();
    assert_eq!(issued.len(), 1, "one certificate issued: {issued:?}");
    assert_eq!(Some(&issued[0]["org_id"]), org_id.as_ref());
    assert_eq!(issued[0]["principals"], json!(["root", "fly", "postgres"]));
    assert_eq!(
        issued[0]["digest"], at_fly["secrets"]["SSH_CERT"]["digest"],
        "SSH_CERT is the issued certificate"
    );
    let machines: Vec<Value> = at_fly["machines"]
        .as_object()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    assert_eq!(machines.len(), 2, "one machine per node");
    for m in &machines {
        let config = &m["config"];
        assert_eq!(config["image"], "flyio/postgres-flex:v0.0.66");
        assert_eq!(config["mounts"][0]["path"], "/data");
        assert_eq!(config["guest"]["memory_mb"], 1024);
        assert_eq!(m["state"], "started");
    }
    let volumes = at_fly["volumes"].as_object().cloned().unwrap_or_default();
    assert_eq!(volumes.len(), 2, "one volume per node");
    assert!(
        volumes
            .values()
            .all(|v| v["name"] == "pg_data" && v["encrypted"] == true)
    );
    assert_eq!(
        dbc.status
            .as_ref()
            .and_then(|s| s.replicas.as_ref())
            .map(|r| (r.desired, r.ready)),
        Some((2, 2))
    );

    // The connection Secret: the superuser bulkhead set as SU_PASSWORD, at
    // the Flycast name.
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let conn = poll("the connection Secret", || async {
        secrets_api.get_opt("ledger-conn").await.ok().flatten()
    })
    .await;
    let password = secret_value(&conn, "password");
    assert!(!password.is_empty());
    assert_eq!(
        app_secret(app_name, "SU_PASSWORD").await,
        password,
        "SU_PASSWORD is the published one"
    );
    // SSH_KEY is the private half of the key the certificate is for.
    let ssh_key = app_secret(app_name, "SSH_KEY").await;
    let fingerprint = ssh_key::PrivateKey::from_openssh(&ssh_key)
        .expect("SSH_KEY is an OpenSSH private key")
        .public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    assert_eq!(issued[0]["key_fingerprint"], fingerprint.as_str());
    assert_eq!(
        (
            secret_value(&conn, "host"),
            secret_value(&conn, "port"),
            secret_value(&conn, "username")
        ),
        (
            format!("{app_name}.flycast"),
            "5432".into(),
            "postgres".into()
        )
    );
    assert_no_secret_leaked(&client, &[password, ssh_key]).await;

    // A node destroyed at Fly: made again, on the volume it left.
    let victim = machines[0]["id"].as_str().expect("machine id").to_string();
    support::fly::control(
        reqwest::Method::POST,
        "/_emulator/drift/destroy-machine",
        Some(json!({ "app": app_name, "machine_id": victim })),
    )
    .await;
    wait_until("the node made again", || async {
        let a = app(&state().await);
        a["machines"]
            .as_object()
            .is_some_and(|m| m.len() == 2 && !m.contains_key(&victim))
    })
    .await;
    let a = app(&state().await);
    assert_eq!(
        a["volumes"].as_object().map(|v| v.len()),
        Some(2),
        "the left volume was mounted again, none made"
    );

    // Another major: refused, the nodes untouched.
    a_major_change_is_refused(&dbcs, "ledger", "16", "17").await;
    let a = app(&state().await);
    let majors: Vec<&Value> = a["machines"]
        .as_object()
        .map(|m| {
            m.values()
                .map(|n| &n["config"]["metadata"]["postgres_major"])
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        majors,
        [&json!("16"), &json!("16")],
        "both nodes still on 16"
    );

    // The Environment's network changed: its apps cannot move, so the
    // Environment refuses the change and names both networks.
    let envs = Api::<Environment>::all(client.clone());
    let set_network = |name: &str| {
        let envs = envs.clone();
        let patch = json!({ "spec": { "network": { "name": name } } });
        let ns = ns.clone();
        async move {
            envs.patch(&ns, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("change the network")
        }
    };
    set_network("another-net").await;
    let env = wait_reason(&envs, &ns, "Synced", "False", "NetworkFixed").await;
    let message = message_of(&env, "Synced");
    assert!(
        message.contains(&format!("network {network}")) && message.contains("another-net"),
        "{message}"
    );
    assert_eq!(
        env.status.and_then(|s| s.network).and_then(|n| n.name),
        Some(network.clone()),
        "still bound to the network it was created on"
    );
    let ledger_apps = |state: &Value| {
        state["apps"]
            .as_object()
            .map(|m| m.keys().filter(|k| k.starts_with("ledger")).count())
    };
    let now = state().await;
    assert_eq!(ledger_apps(&now), Some(1), "no second app");
    assert_eq!(
        app(&now)["network"],
        network.as_str(),
        "the app did not move"
    );

    // Set back: the Environment and its database converge again.
    set_network(&network).await;
    wait_for(&envs, &ns, WAIT, "Ready", is_ready).await;
    wait_for(&dbcs, "ledger", WAIT, "Ready", is_ready).await;

    // An app of the same name made at Fly on another network (by hand,
    // say) is not taken over: the DatabaseCluster says why and builds
    // nothing on it. Orphan, so its deletion leaves that app alone.
    let made = http()
        .post(format!("{}/v1/apps", emulator()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .json(&json!({ "name": "stray-stage", "org_slug": slug, "network": "elsewhere" }))
        .send()
        .await
        .expect("make an app at Fly");
    assert!(made.status().is_success(), "{}", made.status());
    database_cluster("stray", &ns)
        .without_users()
        .spec("databases", json!([]))
        .spec("deletionPolicy", json!("Orphan"))
        .create(&dbcs)
        .await;
    let stray = wait_reason(&dbcs, "stray", "Synced", "False", "NetworkFixed").await;
    let message = message_of(&stray, "Synced");
    assert!(
        message.contains("network elsewhere") && message.contains(&format!("network {network}")),
        "{message}"
    );
    let now = state().await;
    assert_eq!(now["apps"]["stray-stage"]["network"], "elsewhere");
    assert!(
        now["apps"]["stray-stage"]["machines"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "no machine on an app bulkhead did not take over"
    );
    delete_and_wait(&dbcs, "stray", WAIT).await;
    assert!(
        !state().await["apps"]["stray-stage"].is_null(),
        "orphaned: the app is still at Fly"
    );
    // Fly deletes no organization that still has apps.
    let gone = http()
        .delete(format!("{}/v1/apps/stray-stage", emulator()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .expect("delete the app at Fly");
    assert!(gone.status().is_success(), "{}", gone.status());

    // Delete: the app goes, with its machines and volumes.
    delete_and_wait(&dbcs, "ledger", WAIT).await;
    assert!(app(&state().await).is_null(), "the app is deleted at Fly");
    tear_down(&client, &name).await;
}

/// The flex form under 20% 503s, 10% 429s and added latency on the
/// Machines API (`/v1/apps`): one app, one volume and one machine per
/// node, and Fly's own per-app rate limits never refused bulkhead.
#[tokio::test]
async fn a_flex_cluster_converges_under_faults_with_nothing_made_twice() {
    let (_cp, client) = support::fly::setup(&[]).await;
    let name = format!("flex-faulty-{}", unique());
    let mut flex = provider(CREDENTIALS);
    flex["fly"] = json!({ "postgres": "Flex" });
    let (ns, _slug) = fly_staging(&client, &name, |e| e.spec("databaseProvider", flex)).await;
    let _faults = FAULTS.write().await;
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    let before = counters().await;
    inject_faults("/v1/apps", 0.2, 0.1).await;
    database_cluster("ledger", &ns)
        .without_users()
        .spec("databases", json!([]))
        .spec(
            "size",
            json!({ "custom": { "cpus": 1, "memoryMiB": 256, "storageGiB": 1, "replicas": 2 } }),
        )
        .create(&dbcs)
        .await;
    let counters = converged_under_faults(&before, "Ready", || async {
        let dbc = dbcs.get_opt("ledger").await.ok()??;
        is_ready(&dbc).then_some(())
    })
    .await;
    assert_eq!(
        counters["rate_limited_total"], before["rate_limited_total"],
        "Fly's rate limits never refused bulkhead: {counters}"
    );
    let app = state().await["apps"]["ledger-stage"].clone();
    let count = |field: &str| app[field].as_object().map(|m| m.len());
    assert_eq!(
        (count("machines"), count("volumes")),
        (Some(2), Some(2)),
        "one machine and one volume per node, none twice"
    );
    delete_and_wait(&dbcs, "ledger", WAIT).await;
    tear_down(&client, &name).await;
}
