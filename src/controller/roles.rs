//! The ClusterRoles that environment access grants bind to
//! (`bulkhead-environment-<role>`), applied at start-up and shipped by the
//! Helm chart.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use crate::api::environment::EnvironmentRole;
use crate::provider::kubernetes::children::CLUSTER_ROLE;
use crate::provider::kubernetes::environment::cluster_role_for;
use crate::reconcile::managed::FIELD_MANAGER;

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({ "apiGroups": groups, "resources": resources, "verbs": verbs })
}

/// Rules of each environment role. Viewers and testers never read Secrets;
/// only admins touch RBAC inside the namespaces.
pub fn rules_for(role: EnvironmentRole) -> Vec<Value> {
    let workloads = [
        "pods",
        "services",
        "configmaps",
        "persistentvolumeclaims",
        "endpoints",
        "events",
    ];
    let apps = ["deployments", "statefulsets", "replicasets", "daemonsets"];
    let batch = ["jobs", "cronjobs"];
    let viewer = vec![
        rule(&[""], &workloads, &READ),
        rule(&[""], &["pods/log"], &["get"]),
        rule(&["apps"], &apps, &READ),
        rule(&["batch"], &batch, &READ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            &READ,
        ),
        rule(&["bulkhead.dev"], &["databaseclusters"], &READ),
    ];
    match role {
        EnvironmentRole::Viewer => viewer,
        EnvironmentRole::Tester => {
            let mut r = viewer;
            r.push(rule(&["batch"], &batch, &WRITE));
            r.push(rule(&[""], &["pods"], &["create", "delete"]));
            r.push(rule(
                &[""],
                &["pods/exec", "pods/portforward"],
                &["create", "get"],
            ));
            r
        }
        EnvironmentRole::Developer => vec![
            rule(&[""], &workloads, &WRITE),
            rule(&[""], &["secrets"], &WRITE),
            rule(&[""], &["pods/log"], &["get"]),
            rule(
                &[""],
                &["pods/exec", "pods/portforward"],
                &["create", "get"],
            ),
            rule(&["apps"], &apps, &WRITE),
            rule(&["batch"], &batch, &WRITE),
            rule(&["networking.k8s.io"], &["ingresses"], &WRITE),
            rule(&["networking.k8s.io"], &["networkpolicies"], &READ),
            rule(&["bulkhead.dev"], &["databaseclusters"], &WRITE),
        ],
        EnvironmentRole::Admin => vec![rule(&["*"], &["*"], &["*"])],
    }
}

/// The ClusterRole objects, as applied and as the chart ships them.
pub fn environment_cluster_roles() -> Vec<Value> {
    EnvironmentRole::ALL
        .iter()
        .map(|role| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {
                    "name": cluster_role_for(*role),
                    "labels": { crate::api::LABEL_MANAGED_BY: crate::api::MANAGER },
                },
                "rules": rules_for(*role),
            })
        })
        .collect()
}

pub async fn ensure_environment_roles(client: &Client) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &CLUSTER_ROLE.api_resource());
    for role in environment_cluster_roles() {
        let name = role["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await?;
    }
    Ok(())
}
