//! Organization in the cluster: a tenancy boundary. Members get read access
//! to their Organization and its Environments through a ClusterRole and
//! ClusterRoleBinding; access inside the environments' namespaces is granted
//! by the Environment (by tier), and the private network is the
//! NetworkPolicy every Environment of the organization carries.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::Child;
use super::children::{CLUSTER_ROLE, CLUSTER_ROLE_BINDING, ChildKind, Children};
use crate::api::organization::{MemberState, MemberStatus};
use crate::provider::{
    DesiredOrganization, ExternalClient, Observation, Observed, ObservedOrganization,
    OrganizationClient, ProviderError, Readiness,
};

const KINDS: [ChildKind; 2] = [CLUSTER_ROLE, CLUSTER_ROLE_BINDING];

/// Name of the organization's ClusterRole and ClusterRoleBinding.
pub fn tenancy_name(slug: &str) -> String {
    format!("bulkhead:organization:{slug}")
}

/// Kubernetes backend for Organizations.
pub struct KubernetesOrganizations {
    children: Children,
}

impl KubernetesOrganizations {
    pub fn new(children: Children) -> Self {
        KubernetesOrganizations { children }
    }

    fn desired_children(&self, d: &DesiredOrganization, owned: bool) -> Vec<Child> {
        let name = tenancy_name(&d.slug);
        let environments: Vec<&str> = {
            let mut v: Vec<&str> = d.environments.iter().map(String::as_str).collect();
            v.sort();
            v.dedup();
            v
        };
        let mut rules = vec![json!({
            "apiGroups": ["bulkhead.dev"],
            "resources": ["organizations"],
            "resourceNames": [d.owner.name],
            "verbs": ["get", "watch"],
        })];
        if !environments.is_empty() {
            rules.push(json!({
                "apiGroups": ["bulkhead.dev"],
                "resources": ["environments"],
                "resourceNames": environments,
                "verbs": ["get", "watch"],
            }));
        }
        let subjects: Vec<Value> = d
            .members
            .iter()
            .map(|m| json!({ "kind": "User", "name": m.email, "apiGroup": "rbac.authorization.k8s.io" }))
            .collect();
        vec![
            Child::new(
                CLUSTER_ROLE,
                None,
                &name,
                &d.owner,
                owned,
                json!({ "rules": rules }),
            ),
            Child::new(
                CLUSTER_ROLE_BINDING,
                None,
                &name,
                &d.owner,
                owned,
                json!({
                    "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
                    "subjects": subjects,
                }),
            ),
        ]
    }
}

#[async_trait]
impl ExternalClient for KubernetesOrganizations {
    type Desired = DesiredOrganization;
    type Observed = ObservedOrganization;

    async fn observe(&self, d: &DesiredOrganization) -> Observed<Self> {
        let desired = self.desired_children(d, true);
        let drift = self.children.drift(&desired, &KINDS, &d.owner).await?;
        if drift.existing == 0 {
            return Ok(Observation::Missing);
        }
        let role = self
            .children
            .get(CLUSTER_ROLE, None, &tenancy_name(&d.slug))
            .await?;
        let external_id = role
            .as_ref()
            .and_then(|r| r.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            .map(|uid| format!("clusterrole/{uid}"));
        // In the cluster there is no invitation to accept: a member bound
        // by the ClusterRoleBinding is active.
        let binding = self
            .children
            .get(CLUSTER_ROLE_BINDING, None, &tenancy_name(&d.slug))
            .await?;
        let bound: Vec<String> = binding
            .as_ref()
            .and_then(|b| b.get("subjects"))
            .and_then(Value::as_array)
            .map(|subjects| {
                subjects
                    .iter()
                    .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let members = d
            .members
            .iter()
            .map(|m| MemberStatus {
                email: m.email.clone(),
                role: m.role,
                state: if bound.contains(&m.email) {
                    MemberState::Active
                } else {
                    MemberState::Invited
                },
                expires_at: m.expires_at.clone(),
            })
            .collect();
        let readiness = if drift.missing.is_empty() {
            Readiness::ready(format!("tenancy {} in place", tenancy_name(&d.slug)))
        } else {
            Readiness::not_ready(crate::reasons::CREATING, drift.describe().join("; "))
        };
        Ok(Observation::Exists {
            up_to_date: drift.is_clean(),
            drift: drift.describe(),
            readiness,
            observed: ObservedOrganization {
                external_id,
                members,
                ..ObservedOrganization::default()
            },
        })
    }

    async fn create(&self, d: &DesiredOrganization) -> Result<(), ProviderError> {
        self.children
            .apply(&self.desired_children(d, true), &KINDS, &d.owner)
            .await
    }

    async fn update(
        &self,
        d: &DesiredOrganization,
        _observed: &ObservedOrganization,
    ) -> Result<(), ProviderError> {
        self.create(d).await
    }

    async fn delete(&self, d: &DesiredOrganization) -> Result<(), ProviderError> {
        self.children.delete_owned(&KINDS, &d.owner).await
    }

    /// Detaches the children from the Organization so garbage collection
    /// leaves them.
    async fn orphan(&self, d: &DesiredOrganization) -> Result<(), ProviderError> {
        self.children
            .reapply_existing(&self.desired_children(d, false))
            .await
    }
}

/// In the cluster there are no tokens to mint.
impl OrganizationClient for KubernetesOrganizations {}
