//! Tenant boundaries, shown as attacks that fail. The operator runs under
//! the Helm chart's own ServiceAccount (its RBAC and admission policies
//! installed by `helm install`), with production and staging on separate
//! PostgreSQL servers. An application team is a ServiceAccount bound the way
//! the README says (`Environment.spec.access`, role `developer`): it tries
//! to make the operator read, write or reveal what is outside its
//! environment, and each attempt fails while the legitimate use works.

mod support;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::controlplane::{ControlPlane, Operator, condition, delete_and_wait, repo, wait_for};
use support::helm::{NAMESPACE, install_chart, operator_user};
use support::objects::{
    Conditions, database_cluster, environment, exists, is_true, message_of, organization,
    wait_exists, wait_ready_within, wait_reason_within,
};
use support::postgres::{TestPostgres, no_rows};

const WAIT: Duration = Duration::from_secs(120);
const PROD: &str = "t-prod";
const STAGE: &str = "t-stage";

/// What every test shares: the control plane with the chart installed, the
/// two database servers, the operator under the chart's ServiceAccount, the
/// production and staging Environments, and the tenants' kubeconfigs.
struct World {
    cp: &'static ControlPlane,
    prod_pg: TestPostgres,
    /// The staging application team (developer in t-stage).
    tenant: PathBuf,
    /// The operator's ServiceAccount token, as a thief would hold it.
    operator_token: PathBuf,
    operator: Operator,
}

static WORLD: tokio::sync::OnceCell<World> = tokio::sync::OnceCell::const_new();

async fn world() -> &'static World {
    WORLD.get_or_init(build_world).await
}

/// The shared world, and a client of the control plane's admin.
async fn world_and_client() -> (&'static World, Client) {
    let w = world().await;
    (w, w.cp.client().await)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn apply_admin(cp: &ControlPlane, manifest: &str) {
    let out = cp.apply_stdin(manifest, &[]);
    assert!(
        out.status.success(),
        "apply failed: {}\n{manifest}",
        text(&out)
    );
}

fn credentials_secret(name: &str, value: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "stringData": {"dsn": value},
    })
    .to_string()
}

/// `spec.access` of an Environment: `role` for ServiceAccount `ns/name`.
fn access(role: &str, name: &str, ns: &str) -> Value {
    json!([{ "role": role, "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": ns }] }])
}

/// An Organization whose slug is its name.
fn tenancy(name: &str) -> String {
    organization(name).slug(name).manifest()
}

// The shared waits, with this suite's longer WAIT (two PostgreSQL servers
// and the chart's admission policies on every write).
async fn env_ready(client: &Client, name: &str) -> Environment {
    wait_ready_within(&Api::all(client.clone()), name, WAIT).await
}

async fn dbc_ready(client: &Client, ns: &str, name: &str) -> DatabaseCluster {
    wait_ready_within(&Api::namespaced(client.clone(), ns), name, WAIT).await
}

async fn dbc_reason(client: &Client, ns: &str, name: &str, reason: &str) -> DatabaseCluster {
    let dbcs = Api::namespaced(client.clone(), ns);
    wait_reason_within(&dbcs, name, WAIT, "Synced", "False", reason).await
}

async fn build_world() -> World {
    let cp = ControlPlane::full();
    cp.install_crds();
    install_chart(cp);
    let client = cp.client().await;
    let stage_pg = support::postgres::shared().await;
    let prod_pg = TestPostgres::start_new().await;
    apply_admin(
        cp,
        &credentials_secret("pg-production", &prod_pg.admin_dsn()),
    );
    apply_admin(cp, &credentials_secret("pg-staging", &stage_pg.admin_dsn()));

    let operator_token = cp.service_account_kubeconfig(NAMESPACE, support::helm::RELEASE);
    let operator = cp.start_leader_operator(
        &operator_token,
        NAMESPACE,
        "tenant-suite",
        "10",
        &["--log-format", "json"],
    );

    for org in ["acme-prod-t", "acme-stage-t"] {
        apply_admin(cp, &tenancy(org));
    }
    apply_admin(
        cp,
        &environment(PROD, "acme-prod-t", "production")
            .postgres("pg-production")
            .spec("access", access("admin", "prod-admin", PROD))
            .manifest(),
    );
    // The README's way to give an application team its environment.
    apply_admin(
        cp,
        &environment(STAGE, "acme-stage-t", "staging")
            .postgres("pg-staging")
            .spec("access", access("developer", "dev", STAGE))
            .manifest(),
    );
    env_ready(&client, PROD).await;
    env_ready(&client, STAGE).await;
    cp.kubectl_ok(&["create", "serviceaccount", "dev", "-n", STAGE]);
    cp.kubectl_ok(&["create", "serviceaccount", "prod-admin", "-n", PROD]);
    let tenant = cp.service_account_kubeconfig(STAGE, "dev");
    let prod_team = cp.service_account_kubeconfig(PROD, "prod-admin");
    // The aggregated roles are filled in by the controller-manager.
    for (kubeconfig, ns) in [(&tenant, STAGE), (&prod_team, PROD)] {
        let deadline = std::time::Instant::now() + WAIT;
        while cp
            .kubectl_as(
                kubeconfig,
                &[
                    "auth",
                    "can-i",
                    "create",
                    "databaseclusters.bulkhead.dev",
                    "-n",
                    ns,
                ],
            )
            .stdout
            != b"yes\n"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "tenant never got its role in {ns}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // Production's databases, written by the production team: `orders`
    // consents to copies into staging with its own rules, `vault` consents
    // to nothing, `open` consents without rules.
    let consent = json!({
        "allowedEnvironments": [STAGE],
        "sanitize": { "excludeTables": ["audit_log"], "columns": { "customers.email": "hash" } },
        "safeColumns": ["customers.country"],
    });
    for (name, copy_policy) in [
        ("orders", Some(consent)),
        ("vault", None),
        ("open", Some(json!({ "allowedEnvironments": [STAGE] }))),
    ] {
        let mut cluster = database_cluster(name, PROD);
        if let Some(copy_policy) = copy_policy {
            cluster = cluster.spec("copyPolicy", copy_policy);
        }
        let out = cp.apply_as(&prod_team, &cluster.manifest());
        assert!(
            out.status.success(),
            "production team applies {name}: {}",
            text(&out)
        );
    }
    for name in ["orders", "vault", "open"] {
        dbc_ready(&client, PROD, name).await;
    }
    prod_pg
        .admin("orders_app")
        .await
        .batch_execute(
            "SET ROLE orders_owner;
             CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, ssn text, full_name text, country text);
             CREATE TABLE audit_log (id int, entry text);
             INSERT INTO customers SELECT g, 'user' || g || '@real.example', '123-45-' || g, 'Real Person ' || g, 'NL' FROM generate_series(1, 20) g;
             INSERT INTO audit_log VALUES (1, 'who did what');",
        )
        .await
        .expect("seed production");
    World {
        cp,
        prod_pg,
        tenant,
        operator_token,
        operator,
    }
}

fn can_i(cp: &ControlPlane, kubeconfig: &std::path::Path, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&cp.kubectl_as(kubeconfig, &all).stdout).trim() == "yes"
}

#[tokio::test]
async fn a_tenant_holds_rights_in_its_own_namespace_only() {
    let w = world().await;
    for allowed in [
        vec!["create", "databaseclusters.bulkhead.dev", "-n", STAGE],
        vec!["get", "secrets", "-n", STAGE],
    ] {
        assert!(
            can_i(w.cp, &w.tenant, &allowed),
            "the tenant cannot {allowed:?}"
        );
    }
    for denied in [
        vec!["get", "secrets", "-n", PROD],
        vec!["get", "secrets", "-n", NAMESPACE],
        vec!["get", "secrets", "-n", "kube-system"],
        vec!["create", "databaseclusters.bulkhead.dev", "-n", PROD],
        vec!["create", "environments.bulkhead.dev"],
        vec!["patch", "namespaces", STAGE],
        vec![
            "patch",
            "databaseclusters.bulkhead.dev",
            "-n",
            STAGE,
            "--subresource=status",
        ],
    ] {
        assert!(
            !can_i(w.cp, &w.tenant, &denied),
            "the tenant may {denied:?}"
        );
    }
}

#[tokio::test]
async fn a_database_cluster_cannot_choose_its_server_credentials_or_environment() {
    let (w, client) = world_and_client().await;
    // The field that once let a tenant name any Secret in the cluster is gone.
    let out = w.cp.apply_as(
        &w.tenant,
        &database_cluster("steals-token", STAGE)
            .spec(
                "provider",
                json!({ "type": "postgres",
                        "credentialsSecretRef": { "namespace": "kube-system", "name": "admin-token", "key": "token" } }),
            )
            .manifest(),
    );
    assert!(
        !out.status.success(),
        "a DatabaseCluster with spec.provider was accepted"
    );
    assert!(text(&out).contains("provider"), "{}", text(&out));

    // Claiming the production Environment from the staging namespace.
    let out = w.cp.apply_as(
        &w.tenant,
        &database_cluster("claims-prod", STAGE)
            .spec("environmentRef", json!({ "name": PROD }))
            .manifest(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let d = dbc_reason(&client, STAGE, "claims-prod", "EnvironmentMismatch").await;
    let status = d.status.unwrap_or_default();
    assert_ne!(status.tier.as_deref(), Some("production"));
    let message = message_of(&status.conditions, "Synced");
    assert!(
        message.contains(PROD) && message.contains(STAGE),
        "{message}"
    );
    for pg in [&w.prod_pg, support::postgres::shared().await] {
        let admin = pg.admin("postgres").await;
        let sql = "SELECT datname FROM pg_database WHERE datname LIKE 'claims%'";
        assert!(
            no_rows(&admin, sql).await,
            "a database was created for claims-prod"
        );
    }
}

#[tokio::test]
async fn copies_need_the_sources_consent_and_keep_its_rules() {
    let (w, client) = world_and_client().await;
    // A copy of production's `cluster`, masking `columns` (when given).
    let apply_copy = |name: &str, cluster: &str, columns: Option<Value>| {
        let mut source =
            json!({ "clusterRef": { "name": cluster, "namespace": PROD }, "mode": "Sanitized" });
        if let Some(columns) = columns {
            source["sanitize"] = json!({ "columns": columns });
        }
        let manifest = database_cluster(name, STAGE)
            .spec("source", source)
            .manifest();
        let out = w.cp.apply_as(&w.tenant, &manifest);
        assert!(out.status.success(), "{}", text(&out));
    };

    // No consent, and no such cluster: the same answer, nothing copied.
    let hash_email = json!({ "customers.email": "hash" });
    apply_copy("steal", "vault", Some(hash_email.clone()));
    apply_copy("ghost", "does-not-exist", Some(hash_email));
    let steal = dbc_reason(&client, STAGE, "steal", "CopyNotAllowed").await;
    let ghost = dbc_reason(&client, STAGE, "ghost", "CopyNotAllowed").await;
    for d in [&steal, &ghost] {
        let message = message_of(d, "Synced");
        assert!(
            message.contains("does not exist or does not allow copies"),
            "{message}"
        );
        assert!(d.status.as_ref().and_then(|s| s.copy.as_ref()).is_none());
    }

    // Consent without rules is not consent to copy in clear.
    apply_copy("bare", "open", None);
    dbc_reason(&client, STAGE, "bare", "SanitizeRulesMissing").await;

    // Consent with rules: the copy is refused while sensitive-looking
    // columns are neither masked nor declared safe by the source.
    apply_copy(
        "copy",
        "orders",
        Some(json!({ "customers.email": "redact" })),
    );
    let refused = dbc_reason(&client, STAGE, "copy", "SensitiveColumnsUnmasked").await;
    let message = message_of(&refused, "Synced");
    assert!(
        message.contains("customers.ssn") && message.contains("customers.full_name"),
        "{message}"
    );
    assert!(
        !message.contains("customers.country") && !message.contains("customers.email"),
        "{message}"
    );
    let stage_pg = support::postgres::shared().await;
    let target = stage_pg.admin("copy_stage_app").await;
    assert!(
        no_rows(
            &target,
            "SELECT 1 FROM pg_tables WHERE tablename = 'customers'"
        )
        .await,
        "a refused copy wrote to the target"
    );

    // Masked: it copies, and the source's rules hold whatever the consumer
    // asked: email is hashed (not redacted), the audit log stays behind.
    apply_copy(
        "copy",
        "orders",
        Some(
            json!({ "customers.email": "redact", "customers.ssn": "redact", "customers.full_name": "null" }),
        ),
    );
    wait_for(
        &Api::<DatabaseCluster>::namespaced(client.clone(), STAGE),
        "copy",
        WAIT,
        "copied",
        |d| d.status.as_ref().is_some_and(|s| s.copy.is_some()),
    )
    .await;
    let rows = target
        .query("SELECT email, ssn, full_name, country FROM customers", &[])
        .await
        .expect("read the copy");
    assert_eq!(rows.len(), 20);
    for row in &rows {
        let email: String = row.get(0);
        let ssn: Option<String> = row.get(1);
        let name: Option<String> = row.get(2);
        let country: Option<String> = row.get(3);
        assert!(
            email.len() == 64 && email.chars().all(|c| c.is_ascii_hexdigit()),
            "email follows the source's hash rule: {email}"
        );
        assert_eq!(ssn.as_deref(), Some("REDACTED"));
        assert!(name.is_none());
        assert_eq!(
            country.as_deref(),
            Some("NL"),
            "declared safe, copied as is"
        );
    }
    assert!(
        no_rows(
            &target,
            "SELECT 1 FROM pg_tables WHERE tablename = 'audit_log'"
        )
        .await,
        "the source's excluded table was copied"
    );
}

#[tokio::test]
async fn environments_cannot_take_system_or_foreign_namespaces() {
    let (w, client) = world_and_client().await;
    // Stated at admission by the chart's ValidatingAdmissionPolicy.
    let out = w.cp.apply_stdin(
        &environment("takes-operator", "acme-stage-t", "development")
            .spec("namespaces", json!([NAMESPACE]))
            .manifest(),
        &[],
    );
    assert!(
        !out.status.success(),
        "an Environment took the operator's namespace"
    );
    assert!(
        text(&out).contains(&format!(
            "bulkhead never manages the namespaces {NAMESPACE}"
        )),
        "{}",
        text(&out)
    );

    // Another team's namespace, not opted in: reported, nothing written.
    w.cp.kubectl_ok(&["create", "namespace", "payments-prod"]);
    w.cp.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "payments-prod",
        "--from-literal=k=v",
    ]);
    apply_admin(
        w.cp,
        &environment("payments", "acme-stage-t", "development")
            .spec("namespaces", json!(["payments-prod"]))
            .manifest(),
    );
    let envs: Api<Environment> = Api::all(client.clone());
    let e = wait_reason_within(
        &envs,
        "payments",
        WAIT,
        "Synced",
        "False",
        "NamespaceNotOptedIn",
    )
    .await;
    let message = message_of(&e, "Synced");
    assert!(
        message.contains("bulkhead.dev/adoptable-by=payments"),
        "{message}"
    );
    let ns = Api::<Namespace>::all(client.clone())
        .get("payments-prod")
        .await
        .expect("ns");
    assert!(
        !ns.labels().contains_key("bulkhead.dev/environment"),
        "the namespace was labelled"
    );
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), "payments-prod")
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(
        bindings.items.is_empty(),
        "RoleBindings were written: {:?}",
        bindings.items
    );
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), "payments-prod")
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(policies.items.is_empty(), "a NetworkPolicy was written");

    // Opted in by a cluster admin: adopted, and left in place on delete.
    w.cp.kubectl_ok(&[
        "label",
        "namespace",
        "payments-prod",
        "bulkhead.dev/adoptable-by=payments",
    ]);
    env_ready(&client, "payments").await;
    delete_and_wait(&envs, "payments", WAIT).await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "payments-prod")
        .get("settings")
        .await;
    assert!(cm.is_ok(), "the adopted namespace's own objects are gone");
}

/// `kubectl auth can-i --list` as the operator's ServiceAccount in `ns`:
/// one normalized line per rule (resource, names, sorted verbs).
fn effective_rights(cp: &ControlPlane, ns: &str) -> Vec<String> {
    let user = format!("--as={}", operator_user());
    let out = cp.kubectl_ok(&["auth", "can-i", "--list", "-n", ns, &user]);
    // Columns: Resources, Non-Resource URLs, Resource Names, Verbs.
    let mut rules: Vec<String> = out
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    rules.sort();
    rules
}

#[tokio::test]
async fn the_operator_holds_exactly_the_rights_on_the_allow_list() {
    let w = world().await;
    let allow_list = std::fs::read_to_string(repo().join("tests/fixtures/operator-rights.txt"))
        .expect("tests/fixtures/operator-rights.txt");
    let mut seen = String::new();
    for ns in ["kube-system", NAMESPACE, STAGE] {
        seen.push_str(&format!(
            "## namespace {}\n",
            if ns == STAGE { "<environment>" } else { ns }
        ));
        for rule in effective_rights(w.cp, ns) {
            seen.push_str(&rule);
            seen.push('\n');
        }
    }
    let expected: String = allow_list
        .lines()
        .filter(|l| !l.starts_with("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        seen, expected,
        "the operator's effective rights differ from tests/fixtures/operator-rights.txt; review, then update it:\n{seen}"
    );
    // Non-resource URLs (`/api/*`, …) are every identity's discovery rights.
    for line in seen
        .lines()
        .filter(|l| !l.starts_with("## ") && !l.starts_with("[/"))
    {
        let resource = line.split_whitespace().next().unwrap_or_default();
        assert!(!resource.contains('*'), "a wildcard resource: {line}");
        assert!(
            !line.contains("[*]") && !line.contains(" escalate"),
            "a wildcard or escalate verb: {line}"
        );
    }

    // The roles bulkhead hands out, as the controller-manager filled them.
    let roles: Api<ClusterRole> = Api::all(w.cp.client().await);
    for name in [
        "bulkhead-environment-admin",
        "bulkhead-environment-developer",
        "bulkhead-environment-tester",
        "bulkhead-environment-viewer",
    ] {
        let role = wait_for(&roles, name, WAIT, "aggregated", |r| {
            r.rules.as_ref().is_some_and(|r| !r.is_empty())
        })
        .await;
        for rule in role.rules.unwrap_or_default() {
            let all = [
                rule.api_groups.unwrap_or_default(),
                rule.resources.unwrap_or_default(),
                rule.verbs,
            ];
            assert!(
                all.iter().flatten().all(|v| v != "*"),
                "{name} holds a wildcard"
            );
        }
    }
}

#[tokio::test]
async fn a_stolen_operator_token_cannot_cross_the_boundary() {
    let (w, client) = world_and_client().await;
    w.cp.kubectl_ok(&["create", "namespace", "other-team"]);
    let attempts: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "create",
                "clusterrolebinding",
                "mallory",
                "--clusterrole=bulkhead-environment-admin",
                "--user=mallory",
            ],
            "bulkhead:organization",
        ),
        (
            vec![
                "create",
                "rolebinding",
                "mallory",
                "-n",
                "kube-system",
                "--clusterrole=bulkhead-environment-admin",
                "--user=mallory",
            ],
            "only in environment namespaces",
        ),
        (
            vec![
                "create",
                "rolebinding",
                "mallory",
                "-n",
                "other-team",
                "--clusterrole=bulkhead-operator-namespace",
                "--user=mallory",
            ],
            "only in environment namespaces",
        ),
        (
            vec![
                "create",
                "rolebinding",
                "mallory",
                "-n",
                STAGE,
                "--clusterrole=cluster-admin",
                "--user=mallory",
            ],
            "forbidden",
        ),
        (vec!["get", "secrets", "-n", "kube-system"], "forbidden"),
        (vec!["get", "secrets", "-n", "other-team"], "forbidden"),
        (
            vec![
                "label",
                "namespace",
                "kube-system",
                "bulkhead.dev/environment=mallory",
            ],
            "never writes default, kube-*",
        ),
        (
            vec![
                "label",
                "namespace",
                "other-team",
                "bulkhead.dev/environment=mallory",
            ],
            "adoptable-by",
        ),
        (
            vec!["delete", "namespace", "other-team"],
            "deletes only namespaces it created",
        ),
        // Rules it holds itself (so RBAC alone would allow it), but not a
        // bulkhead:organization:* role: admission refuses.
        (
            vec![
                "create",
                "clusterrole",
                "mallory",
                "--verb=get",
                "--resource=organizations.bulkhead.dev",
            ],
            "bulkhead:organization",
        ),
        // Rules it does not hold: RBAC refuses.
        (
            vec![
                "create",
                "clusterrole",
                "bulkhead:organization:mallory",
                "--verb=get",
                "--resource=secrets",
            ],
            "not currently held",
        ),
        (
            vec![
                "patch",
                "clusterrole",
                "bulkhead-environment-viewer",
                "--type=merge",
                "-p",
                r#"{"metadata":{"labels":{"rbac.authorization.k8s.io/aggregate-to-view":"x"}}}"#,
            ],
            "forbidden",
        ),
    ];
    for (args, why) in attempts {
        let out = w.cp.kubectl_as(&w.operator_token, &args);
        assert!(
            !out.status.success(),
            "the operator's token could: kubectl {}",
            args.join(" ")
        );
        assert!(
            text(&out).to_lowercase().contains(&why.to_lowercase()),
            "kubectl {} was refused, but not for {why:?}: {}",
            args.join(" "),
            text(&out)
        );
    }
    // Nothing happened.
    assert!(
        !exists(
            &Api::<RoleBinding>::namespaced(client.clone(), "kube-system"),
            "mallory"
        )
        .await
    );
    let ns = Api::<Namespace>::all(client)
        .get("other-team")
        .await
        .expect("ns");
    assert!(ns.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn isolation_never_stops_production() {
    let (w, client) = world_and_client().await;
    let envs: Api<Environment> = Api::all(client.clone());
    // A staging Environment in production's Organization and namespace.
    apply_admin(
        w.cp,
        &environment("intruder", "acme-prod-t", "staging")
            .postgres("pg-staging")
            .spec("namespaces", json!([PROD]))
            .manifest(),
    );
    let intruder = wait_reason_within(
        &envs,
        "intruder",
        WAIT,
        "Synced",
        "False",
        "IsolationViolated",
    )
    .await;
    assert!(!is_true(&intruder, "Ready"));
    let prod = wait_for(&envs, PROD, WAIT, "Isolated=False", |e| {
        condition(e.conditions(), "Isolated")
            .is_some_and(|c| c.status == "False" && c.message.contains("intruder"))
    })
    .await;
    let conditions = prod.conditions();
    assert!(
        is_true(conditions, "Ready") && is_true(conditions, "Synced"),
        "{conditions:?}"
    );

    // Production still repairs drift.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), PROD);
    policies
        .delete("bulkhead-private-network", &DeleteParams::default())
        .await
        .expect("delete the NetworkPolicy");
    wait_exists(&policies, "bulkhead-private-network", WAIT, "restored").await;
    dbc_ready(&client, PROD, "orders").await;
    // The intruder wrote nothing into production's namespace.
    let uid = envs
        .get("intruder")
        .await
        .expect("get")
        .uid()
        .unwrap_or_default();
    let owned = Api::<RoleBinding>::namespaced(client.clone(), PROD)
        .list(&ListParams::default().labels(&format!("bulkhead.dev/owner-uid={uid}")))
        .await
        .expect("list");
    assert!(owned.items.is_empty());

    // Sharing production's database server is a violation too.
    apply_admin(
        w.cp,
        &environment("twin", "acme-stage-t", "development")
            .postgres("pg-production")
            .manifest(),
    );
    let twin = wait_reason_within(
        &envs,
        "twin",
        WAIT,
        "Isolated",
        "False",
        "SharedDatabaseServer",
    )
    .await;
    assert!(!is_true(&twin, "Ready"));
    let events = w.cp.kubectl_ok(&["get", "events", "-A", "-o", "json"]);
    assert!(
        events.contains("SharedDatabaseServer")
            || events.contains("SharedOrganization")
            || events.contains("SharedNamespace"),
        "no Warning Event about the violation"
    );
    for name in ["intruder", "twin"] {
        delete_and_wait(&envs, name, WAIT).await;
    }
    wait_for(&envs, PROD, WAIT, "Isolated again", |e| {
        is_true(e, "Isolated")
    })
    .await;
}

#[tokio::test]
async fn secrets_bulkhead_did_not_make_are_never_touched() {
    let (w, client) = world_and_client().await;
    let out = w.cp.kubectl_as(
        &w.tenant,
        &[
            "create",
            "secret",
            "generic",
            "payments-keys",
            "-n",
            STAGE,
            "--from-literal=api_key=keep-me",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = w.cp.apply_as(
        &w.tenant,
        &database_cluster("conflicted", STAGE)
            .spec(
                "writeConnectionSecretToRef",
                json!({ "name": "payments-keys" }),
            )
            .manifest(),
    );
    assert!(out.status.success(), "{}", text(&out));
    dbc_reason(&client, STAGE, "conflicted", "SecretConflict").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), STAGE);
    let check = |s: &Secret| {
        let data = s.data.clone().unwrap_or_default();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["api_key"]);
        assert_eq!(
            data.get("api_key").map(|v| v.0.as_slice()),
            Some(&b"keep-me"[..])
        );
        assert!(s.metadata.owner_references.is_none());
        assert!(!s.labels().contains_key("app.kubernetes.io/managed-by"));
    };
    check(&secrets.get("payments-keys").await.expect("get"));
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), STAGE);
    delete_and_wait(&dbcs, "conflicted", WAIT).await;
    check(&secrets.get("payments-keys").await.expect("still there"));
}

#[tokio::test]
async fn two_organizations_cannot_claim_one_slug() {
    let (w, client) = world_and_client().await;
    let orgs: Api<Organization> = Api::all(client.clone());
    apply_admin(
        w.cp,
        &organization("slug-first").slug("shared-slug").manifest(),
    );
    let first = wait_for(&orgs, "slug-first", WAIT, "Ready", |o| is_true(o, "Ready")).await;
    apply_admin(
        w.cp,
        &organization("slug-second")
            .slug("shared-slug")
            .member("eve@evil.example", "admin")
            .manifest(),
    );
    let second = wait_reason_within(
        &orgs,
        "slug-second",
        WAIT,
        "Synced",
        "False",
        "SlugConflict",
    )
    .await;
    let message = message_of(&second, "Synced");
    assert!(message.contains("slug-first"), "{message}");
    let role = Api::<ClusterRole>::all(client.clone())
        .get("bulkhead:organization:shared-slug")
        .await
        .expect("the first's ClusterRole");
    assert_eq!(
        role.labels().get("bulkhead.dev/owner-uid"),
        first.uid().as_ref()
    );
    let binding = w.cp.kubectl_ok(&[
        "get",
        "clusterrolebinding",
        "bulkhead:organization:shared-slug",
        "-o",
        "json",
    ]);
    assert!(
        !binding.contains("eve@evil.example"),
        "the second claimer wrote its members"
    );
    delete_and_wait(&orgs, "slug-second", WAIT).await;
    assert!(
        exists(
            &Api::<ClusterRole>::all(client.clone()),
            "bulkhead:organization:shared-slug"
        )
        .await,
        "deleting the second claimer removed the first's tenancy"
    );
}

#[tokio::test]
async fn no_credential_appears_in_logs_events_or_status() {
    let (w, client) = world_and_client().await;
    let stage_pg = support::postgres::shared().await;
    let port = stage_pg.port();
    let secret = || bulkhead::provider::generate_password().expose().to_string();
    let (p1, p2, p3, p4, p5, p6, token) = (
        secret(),
        secret(),
        secret(),
        secret(),
        secret(),
        secret(),
        format!("fm1r_{}", secret()),
    );
    // Each malformed or failing credential, and the reason it must produce.
    let cases: Vec<(&str, String, &str)> = vec![
        ("leak-token", token.clone(), "CredentialsUnavailable"),
        (
            "leak-noscheme",
            format!("postgres:{p1}@127.0.0.1:{port}/postgres"),
            "CredentialsUnavailable",
        ),
        (
            "leak-mysql",
            format!("mysql://root:{p2}@127.0.0.1/db"),
            "CredentialsUnavailable",
        ),
        (
            "leak-quote",
            format!("host=127.0.0.1 user=postgres password='{p3}"),
            "CredentialsUnavailable",
        ),
        (
            "leak-password",
            format!("postgres://postgres:{p4}@127.0.0.1:{port}/postgres?sslmode=disable"),
            "CredentialsUnavailable",
        ),
        (
            "leak-down",
            format!(
                "postgres://postgres:{p5}@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"
            ),
            "ProviderUnavailable",
        ),
        (
            "leak-tls",
            format!(
                "postgres://postgres:{p6}@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
            ),
            "CredentialsUnavailable",
        ),
    ];
    for (name, value, _) in &cases {
        apply_admin(w.cp, &credentials_secret(name, value));
        apply_admin(
            w.cp,
            &environment(name, "acme-stage-t", "development")
                .postgres(name)
                .manifest(),
        );
    }
    for (name, _, _) in &cases {
        env_ready(&client, name).await;
        apply_admin(w.cp, &database_cluster("db", name).manifest());
    }
    for (name, _, reason) in &cases {
        let d = dbc_reason(&client, name, "db", reason).await;
        let message = message_of(&d, "Synced");
        if *reason == "CredentialsUnavailable" && *name != "leak-password" {
            assert!(
                message.contains(&format!("Secret {NAMESPACE}/{name} key dsn")),
                "{name}: the error does not say which Secret: {message}"
            );
        }
    }
    // Every secret part of those credentials (not hosts or ports, which
    // messages may name), and the generated passwords bulkhead wrote.
    let mut values: Vec<String> = vec![p1, p2, p3, p4, p5, p6, token];
    for ns in [PROD, STAGE] {
        let secrets = Api::<Secret>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=bulkhead"))
            .await
            .expect("list");
        for s in secrets.items {
            for v in s.data.unwrap_or_default().values() {
                let v = String::from_utf8_lossy(&v.0).into_owned();
                if v.len() >= 16 {
                    values.push(v);
                }
            }
        }
    }
    // Give every failure time to reach the log, Events and status.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let haystacks = [
        ("operator log (JSON)", w.operator.log()),
        (
            "Events",
            w.cp.kubectl_ok(&["get", "events", "-A", "-o", "json"]),
        ),
        (
            "status of every object",
            w.cp.kubectl_ok(&["get", "org,env,dbc", "-A", "-o", "json"]),
        ),
    ];
    for (what, haystack) in &haystacks {
        for v in &values {
            // Any 12-character window of a credential counts as a leak.
            let chars: Vec<char> = v.chars().collect();
            for window in chars.windows(12.min(chars.len())) {
                let fragment: String = window.iter().collect();
                assert!(
                    !haystack.contains(&fragment),
                    "{what} carries a fragment of a credential ({fragment:?})"
                );
            }
        }
    }
    for (name, _, _) in &cases {
        let _ = Api::<Environment>::all(client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }
}
