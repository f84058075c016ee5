//! What a platform engineer sees when bulkhead's controllers run on a real
//! control plane (etcd, kube-apiserver, controller-manager, scheduler, and
//! kwok playing the kubelet): conditions, objects in the apiserver, repairs.

mod support;

use std::sync::OnceLock;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::cnpg::{self, json_of};
use support::controlplane::{
    ControlPlane, Operator, create_yaml, repo, unique, wait_for, wait_gone,
};
use support::objects::{
    WAIT, all_events, cnpg_cluster_healthy, environment, exists, has_reason, is_ready,
    organization, wait_exists, wait_ready, wait_reason,
};

static OPERATOR: OnceLock<Operator> = OnceLock::new();

/// The control plane with one operator, shared by this binary's tests.
async fn setup() -> (&'static ControlPlane, Client) {
    let cp = ControlPlane::full();
    OPERATOR.get_or_init(|| cp.start_operator(&[]));
    (cp, cp.client().await)
}

/// An Organization and a staging Environment owning one namespace.
async fn org_and_env(client: &Client, tier: &str) -> (String, String) {
    let name = format!("t-{}", unique());
    let orgs: Api<Organization> = Api::all(client.clone());
    let envs: Api<Environment> = Api::all(client.clone());
    organization(&name)
        .member(&format!("dev@{name}.example"), "member")
        .spec("billing", json!({ "plan": "launch" }))
        .create(&orgs)
        .await;
    environment(&name, &name, tier)
        .developers("devs")
        .spec("network", json!({ "allowedCIDRs": ["10.8.0.0/16"] }))
        .spec(
            "config",
            json!({ "data": { "LOG_LEVEL": "debug" }, "featureFlags": { "new-checkout": true } }),
        )
        .create(&envs)
        .await;
    wait_ready(&envs, &name).await;
    (name.clone(), name)
}

#[tokio::test]
async fn examples_become_ready_and_kubectl_wait_works() {
    let (cp, client) = setup().await;
    for set in ["production", "staging"] {
        for file in [
            "organization.yaml",
            "environment.yaml",
            "databasecluster.yaml",
        ] {
            let path = repo().join("examples").join(set).join(file);
            cp.kubectl_ok(&["apply", "-f", &path.to_string_lossy()]);
        }
    }
    let orgs: Api<Organization> = Api::all(client.clone());
    let envs: Api<Environment> = Api::all(client.clone());
    for org in ["acme-production", "acme-staging"] {
        wait_for(&orgs, org, WAIT, "Organization Ready", is_ready).await;
    }
    for env in ["production", "staging"] {
        wait_for(&envs, env, WAIT, "Environment Ready", is_ready).await;
    }
    // CloudNativePG runs the clusters; under kwok it never hears from a
    // PostgreSQL, so its healthy status is written in its place.
    for (ns, cluster) in [("staging", "my-app-db-stage"), ("production", "my-app-db")] {
        cnpg_cluster_healthy(&client, ns, cluster, WAIT).await;
    }
    let staging_db = wait_for(
        &Api::<DatabaseCluster>::namespaced(client.clone(), "staging"),
        "my-app-db",
        WAIT,
        "Ready",
        is_ready,
    )
    .await;
    let prod_db = wait_for(
        &Api::<DatabaseCluster>::namespaced(client.clone(), "production"),
        "my-app-db",
        WAIT * 2,
        "Ready",
        is_ready,
    )
    .await;

    // kubectl wait understands the conditions.
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "org/acme-production",
        "org/acme-staging",
        "env/production",
        "env/staging",
        "--timeout=10s",
    ]);
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "-n",
        "staging",
        "dbc/my-app-db",
        "--timeout=10s",
    ]);

    // Staging names get the suffix; production does not.
    let staging_status = staging_db.status.clone().unwrap_or_default();
    assert_eq!(
        staging_status.external_name.as_deref(),
        Some("my-app-db-stage")
    );
    assert_eq!(
        prod_db
            .status
            .clone()
            .unwrap_or_default()
            .external_name
            .as_deref(),
        Some("my-app-db")
    );
    let cluster = cnpg::clusters(&client, "staging")
        .get("my-app-db-stage")
        .await
        .expect("Cluster my-app-db-stage");
    assert_eq!(
        json_of(&cluster)["spec"]["instances"],
        1,
        "staging uses the development preset"
    );
    let prod_cluster = cnpg::clusters(&client, "production")
        .get("my-app-db")
        .await
        .expect("production Cluster");
    assert_eq!(
        json_of(&prod_cluster)["spec"]["instances"],
        3,
        "production preset is HA"
    );
    assert_eq!(
        prod_db
            .status
            .and_then(|s| s.replicas)
            .map(|r| (r.desired, r.ready)),
        Some((3, 3))
    );

    // The connection Secret has every key an app needs.
    let secret = Api::<Secret>::namespaced(client.clone(), "staging")
        .get("my-app-db-connection")
        .await
        .expect("connection Secret");
    let data = secret.data.unwrap_or_default();
    for key in ["host", "port", "username", "password", "database", "uri"] {
        assert!(data.contains_key(key), "connection Secret lacks {key}");
    }
    assert_eq!(
        String::from_utf8_lossy(&data["host"].0),
        "my-app-db-stage-rw.staging.svc.cluster.local"
    );

    // Namespaces are labelled; RBAC, private network and config exist.
    let ns = Api::<Namespace>::all(client.clone())
        .get("staging")
        .await
        .expect("namespace");
    let labels = ns.labels();
    assert_eq!(
        labels.get("bulkhead.dev/tier").map(String::as_str),
        Some("staging")
    );
    assert_eq!(
        labels.get("bulkhead.dev/organization").map(String::as_str),
        Some("acme-staging")
    );
    assert_eq!(
        labels.get("bulkhead.dev/environment").map(String::as_str),
        Some("staging")
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "staging")
        .get("bulkhead-environment")
        .await
        .expect("ConfigMap");
    let cm_data = cm.data.unwrap_or_default();
    assert_eq!(
        cm_data.get("FEATURE_NEW_CHECKOUT").map(String::as_str),
        Some("true")
    );
    assert_eq!(cm_data.get("LOG_LEVEL").map(String::as_str), Some("debug"));
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), "production")
        .get("bulkhead-private-network")
        .await
        .expect("NetworkPolicy");
    let np_json = serde_json::to_string(&np.spec).unwrap_or_default();
    assert!(
        np_json.contains("acme-production") && np_json.contains("10.8.0.0/16"),
        "policy admits the org and the VPN: {np_json}"
    );
    // Production is least privilege: plain members only view.
    let rb = Api::<RoleBinding>::namespaced(client.clone(), "production")
        .get("bulkhead-members-viewer")
        .await
        .expect("member RoleBinding");
    assert!(
        rb.subjects
            .unwrap_or_default()
            .iter()
            .any(|s| s.name == "bob@acme.example")
    );
    assert!(
        !exists(
            &Api::<RoleBinding>::namespaced(client.clone(), "production"),
            "bulkhead-members-developer"
        )
        .await
    );
    let role = Api::<ClusterRole>::all(client.clone())
        .get("bulkhead:organization:acme-staging")
        .await
        .expect("org ClusterRole");
    assert!(
        serde_json::to_string(&role.rules)
            .unwrap_or_default()
            .contains("staging")
    );

    // `kubectl get` shows the columns a user reads.
    let out = cp.kubectl_ok(&["get", "dbc", "-n", "staging"]);
    assert!(
        out.contains("my-app-db-stage") && out.contains("True"),
        "{out}"
    );
}

#[tokio::test]
async fn drift_is_repaired_and_spec_changes_converge() {
    let (_cp, client) = setup().await;
    let (_org, env_name) = org_and_env(&client, "staging").await;
    let ns = env_name.clone();
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let old_rb = rbs
        .get("bulkhead-access-developer")
        .await
        .expect("access RoleBinding")
        .uid();
    rbs.delete("bulkhead-access-developer", &DeleteParams::default())
        .await
        .expect("delete RoleBinding");
    nps.delete("bulkhead-private-network", &DeleteParams::default())
        .await
        .expect("delete NetworkPolicy");
    cms.delete("bulkhead-environment", &DeleteParams::default())
        .await
        .expect("delete ConfigMap");
    wait_for(
        &rbs,
        "bulkhead-access-developer",
        WAIT,
        "RoleBinding restored",
        |rb| rb.uid() != old_rb,
    )
    .await;
    wait_exists(
        &nps,
        "bulkhead-private-network",
        WAIT,
        "NetworkPolicy restored",
    )
    .await;
    wait_exists(&cms, "bulkhead-environment", WAIT, "ConfigMap restored").await;

    // A hand edit is reverted.
    cms.patch(
        "bulkhead-environment",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"LOG_LEVEL": "trace"}})),
    )
    .await
    .expect("edit ConfigMap");
    // A spec change converges and the generation is tracked.
    let envs: Api<Environment> = Api::all(client.clone());
    let patched = envs
        .patch(
            &env_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"config": {"data": {"LOG_LEVEL": "info", "NEW": "1"}}}})),
        )
        .await
        .expect("patch Environment");
    let generation = patched.metadata.generation;
    wait_for(
        &cms,
        "bulkhead-environment",
        WAIT,
        "ConfigMap follows the spec",
        |cm| {
            let d = cm.data.clone().unwrap_or_default();
            d.get("LOG_LEVEL").map(String::as_str) == Some("info")
                && d.get("NEW").map(String::as_str) == Some("1")
        },
    )
    .await;
    let env = wait_for(&envs, &env_name, WAIT, "observedGeneration", |e| {
        e.status.as_ref().and_then(|s| s.observed_generation) == generation && is_ready(e)
    })
    .await;
    assert!(generation.unwrap_or(0) >= 2, "{env:?}");
}

#[tokio::test]
async fn environment_waits_for_a_missing_organization() {
    let (_cp, client) = setup().await;
    let name = format!("t-{}", unique());
    let envs: Api<Environment> = Api::all(client.clone());
    environment(&name, &format!("{name}-org"), "development")
        .create(&envs)
        .await;
    let env = wait_for(&envs, &name, WAIT, "OrganizationNotFound", |e| {
        e.status.as_ref().is_some_and(|s| {
            has_reason(
                &s.conditions,
                "OrganizationReady",
                "False",
                "OrganizationNotFound",
            )
        })
    })
    .await;
    let conds = env.status.unwrap_or_default().conditions;
    assert!(
        has_reason(&conds, "Ready", "False", "OrganizationNotFound"),
        "{conds:?}"
    );
    assert!(
        !exists(&Api::<Namespace>::all(client.clone()), &name).await,
        "nothing created"
    );
    // The failure is also an Event on the Environment.
    assert!(
        all_events(&client).await.iter().any(|e| e
            .regarding
            .as_ref()
            .and_then(|r| r.name.as_deref())
            == Some(name.as_str())
            && e.reason.as_deref() == Some("OrganizationNotFound")
            && e.type_.as_deref() == Some("Warning")),
        "a Warning Event says why"
    );

    // Once the Organization exists the Environment converges by itself.
    organization(&format!("{name}-org"))
        .create(&Api::all(client.clone()))
        .await;
    wait_for(
        &envs,
        &name,
        WAIT,
        "Ready after the Organization appears",
        is_ready,
    )
    .await;
    assert!(exists(&Api::<Namespace>::all(client.clone()), &name).await);
}

#[tokio::test]
async fn sharing_an_organization_is_reported_on_both_and_stops_only_the_lower_tier() {
    let (_cp, client) = setup().await;
    let org = format!("t-{}", unique());
    organization(&org).create(&Api::all(client.clone())).await;
    let envs: Api<Environment> = Api::all(client.clone());
    let stage = format!("{org}-stage");
    let prod = format!("{org}-prod");
    environment(&stage, &org, "staging").create(&envs).await;
    wait_for(&envs, &stage, WAIT, "staging Ready", is_ready).await;
    environment(&prod, &org, "production")
        .spec("isolation", json!({ "mode": "Enforce" }))
        .create(&envs)
        .await;
    // Production reports the violation and keeps converging.
    let ready_but_shared =
        |e: &Environment| is_ready(e) && has_reason(e, "Isolated", "False", "SharedOrganization");
    let what = "Ready with Isolated=False SharedOrganization";
    wait_for(&envs, &prod, WAIT, what, ready_but_shared).await;
    assert!(
        exists(&Api::<Namespace>::all(client.clone()), &prod).await,
        "production provisions its namespace"
    );
    // The staging side reports it too and, under Enforce (its default),
    // stops: it is the lower tier.
    let s = wait_for(&envs, &stage, WAIT, "staging stops", |e| {
        e.status.as_ref().is_some_and(|s| {
            has_reason(&s.conditions, "Isolated", "False", "SharedOrganization")
                && has_reason(&s.conditions, "Ready", "False", "IsolationViolated")
        })
    })
    .await;
    assert!(s.status.is_some());

    // Warn reports but provisions.
    envs.patch(
        &stage,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"isolation": {"mode": "Warn"}}})),
    )
    .await
    .expect("switch to Warn");
    let what = "Ready with Isolated=False under Warn";
    wait_for(&envs, &stage, WAIT, what, ready_but_shared).await;
}

#[tokio::test]
async fn database_cluster_in_a_namespace_no_environment_owns_waits() {
    let (_cp, client) = setup().await;
    let ns = format!("t-{}", unique());
    Api::<Namespace>::all(client.clone())
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("create namespace");
    let dbcs: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    create_yaml(&dbcs, "apiVersion: bulkhead.dev/v1alpha1\nkind: DatabaseCluster\nmetadata: {name: orphan-db}\nspec: {}\n").await;
    let d = wait_reason(&dbcs, "orphan-db", "Ready", "False", "NoEnvironment").await;
    let conds = d.status.unwrap_or_default().conditions;
    assert!(
        has_reason(&conds, "Synced", "False", "NoEnvironment"),
        "{conds:?}"
    );
    assert!(
        cnpg::clusters(&client, &ns)
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "no Cluster without an Environment"
    );
}

// deletionPolicy Delete vs Orphan of in-cluster DatabaseClusters: tests/cloudnativepg.rs.

#[tokio::test]
async fn paused_objects_are_left_alone() {
    let (_cp, client) = setup().await;
    let (_org, env_name) = org_and_env(&client, "development").await;
    let envs: Api<Environment> = Api::all(client.clone());
    envs.patch(&env_name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"bulkhead.dev/paused": "true"}}, "spec": {"config": {"data": {"PAUSED": "yes"}}}})))
        .await
        .expect("pause");
    wait_reason(&envs, &env_name, "Synced", "False", "ReconcilePaused").await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &env_name)
        .get("bulkhead-environment")
        .await
        .expect("cm");
    assert!(
        !cm.data.unwrap_or_default().contains_key("PAUSED"),
        "a paused Environment is not converged"
    );
    envs.patch(
        &env_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"bulkhead.dev/paused": null}}})),
    )
    .await
    .expect("unpause");
    wait_for(
        &Api::<ConfigMap>::namespaced(client.clone(), &env_name),
        "bulkhead-environment",
        WAIT,
        "converged after unpause",
        |cm| cm.data.clone().unwrap_or_default().contains_key("PAUSED"),
    )
    .await;
}

#[tokio::test]
async fn observe_only_organization_reports_what_is_missing() {
    let (_cp, client) = setup().await;
    let name = format!("t-{}", unique());
    let orgs: Api<Organization> = Api::all(client.clone());
    organization(&name)
        .spec("managementPolicy", json!("ObserveOnly"))
        .create(&orgs)
        .await;
    wait_reason(&orgs, &name, "Synced", "False", "ExternalObjectMissing").await;
    assert!(
        !exists(
            &Api::<ClusterRole>::all(client.clone()),
            &format!("bulkhead:organization:{name}")
        )
        .await,
        "ObserveOnly never writes"
    );
}

#[tokio::test]
async fn expired_access_is_removed_and_reported() {
    let (_cp, client) = setup().await;
    let (_org, env_name) = org_and_env(&client, "staging").await;
    let envs: Api<Environment> = Api::all(client.clone());
    let soon = (k8s_openapi::jiff::Timestamp::now()
        + k8s_openapi::jiff::SignedDuration::from_secs(4))
    .to_string();
    envs.patch(
        &env_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"access": [
            {"role": "developer", "subjects": [{"kind": "Group", "name": "devs"}]},
            {"role": "tester", "subjects": [{"kind": "User", "name": "contractor@partner.example"}], "expiresAt": soon}
        ]}})),
    )
    .await
    .expect("grant temporary access");
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), &env_name);
    wait_exists(
        &rbs,
        "bulkhead-access-tester",
        WAIT,
        "temporary grant applied",
    )
    .await;
    wait_gone(&rbs, "bulkhead-access-tester", WAIT).await;
    let env = wait_for(&envs, &env_name, WAIT, "expiredAccess reported", |e| {
        e.status.as_ref().is_some_and(|s| {
            s.expired_access
                .iter()
                .any(|a| a.contains("contractor@partner.example"))
        })
    })
    .await;
    assert!(is_ready(&env));
    assert!(
        exists(&rbs, "bulkhead-access-developer").await,
        "permanent grants stay"
    );
}
