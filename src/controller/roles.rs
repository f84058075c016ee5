//! The ClusterRoles that environment access grants and organization
//! members are bound to (`bulkhead-environment-<role>`), shipped by the Helm
//! chart and created at start-up only where missing.
//!
//! They hold no rules of their own and no wildcard: each aggregates
//! Kubernetes' own roles (`admin`, `edit`, `view`, through the
//! `rbac.authorization.k8s.io/aggregate-to-*` labels), so the rights people
//! get in an environment are exactly what the cluster's built-in roles give,
//! plus every CRD's aggregated roles (bulkhead's DatabaseClusters below).
//! Testers get `view` plus running jobs, pods and exec.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::api::environment::EnvironmentRole;
use crate::provider::kubernetes::children::CLUSTER_ROLE;
use crate::provider::kubernetes::environment::cluster_role_for;
use crate::reconcile::managed::FIELD_MANAGER;

const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";
/// Label of roles aggregated into `bulkhead-environment-tester`.
pub const AGGREGATE_TO_TESTER: &str = "bulkhead.dev/aggregate-to-environment-tester";

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({ "apiGroups": groups, "resources": resources, "verbs": verbs })
}

/// The labels whose roles an environment role aggregates.
pub fn aggregated_labels(role: EnvironmentRole) -> Vec<&'static str> {
    match role {
        EnvironmentRole::Admin => vec![AGGREGATE_TO_ADMIN],
        EnvironmentRole::Developer => vec![AGGREGATE_TO_EDIT],
        EnvironmentRole::Tester => vec![AGGREGATE_TO_VIEW, AGGREGATE_TO_TESTER],
        EnvironmentRole::Viewer => vec![AGGREGATE_TO_VIEW],
    }
}

fn cluster_role(name: &str, labels: Value, body: Value) -> Value {
    let mut labels = labels;
    labels[crate::api::LABEL_MANAGED_BY] = json!(crate::api::MANAGER);
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": name, "labels": labels },
    });
    if let (Some(r), Some(b)) = (role.as_object_mut(), body.as_object()) {
        r.extend(b.clone());
    }
    role
}

/// Every ClusterRole behind the environment roles, as applied and as the
/// chart ships them: the four aggregating roles, the tester's extra rules,
/// and bulkhead's own kinds for `view` and `edit`/`admin`.
pub fn environment_cluster_roles() -> Vec<Value> {
    let mut out: Vec<Value> = EnvironmentRole::ALL
        .iter()
        .map(|role| {
            let selectors: Vec<Value> = aggregated_labels(*role)
                .into_iter()
                .map(|l| json!({ "matchLabels": { l: "true" } }))
                .collect();
            cluster_role(
                &cluster_role_for(*role),
                json!({}),
                json!({ "aggregationRule": { "clusterRoleSelectors": selectors } }),
            )
        })
        .collect();
    out.push(cluster_role(
        "bulkhead-environment-tester-extras",
        json!({ AGGREGATE_TO_TESTER: "true" }),
        json!({ "rules": [
            rule(&["batch"], &["jobs", "cronjobs"], &WRITE),
            rule(&[""], &["pods"], &["create", "delete"]),
            rule(&[""], &["pods/exec", "pods/portforward"], &["create", "get"]),
        ]}),
    ));
    out.push(cluster_role(
        "bulkhead-databaseclusters-view",
        json!({ AGGREGATE_TO_VIEW: "true" }),
        json!({ "rules": [rule(&["bulkhead.dev"], &["databaseclusters"], &READ)] }),
    ));
    out.push(cluster_role(
        "bulkhead-databaseclusters-edit",
        json!({ AGGREGATE_TO_EDIT: "true", AGGREGATE_TO_ADMIN: "true" }),
        json!({ "rules": [rule(&["bulkhead.dev"], &["databaseclusters"], &WRITE)] }),
    ));
    out
}

/// Creates those of [`environment_cluster_roles`] that do not exist yet.
/// Existing ones are left alone (the chart owns them, and writing
/// aggregated roles needs cluster-admin), so an operator installed by the
/// chart never writes them.
pub async fn ensure_environment_roles(client: &Client) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &CLUSTER_ROLE.api_resource());
    for role in environment_cluster_roles() {
        let name = role["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if api.get_opt(&name).await?.is_some() {
            continue;
        }
        match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&role),
            )
            .await
        {
            Ok(_) => info!(role = %name, "created environment role"),
            Err(e) => {
                warn!(role = %name, error = %e, "environment role missing and not creatable: install it with the Helm chart");
                return Err(e);
            }
        }
    }
    Ok(())
}
