//! Environment in the cluster: labelled namespaces, RoleBindings for access
//! grants and organization members, the organization's private network as a
//! NetworkPolicy, the plan's ResourceQuota and the environment ConfigMap.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::children::{
    CONFIG_MAP, ChildKind, Children, NAMESPACE, NETWORK_POLICY, RESOURCE_QUOTA, ROLE_BINDING,
};
use super::{Child, is_owned_by};
use crate::api::environment::{EnvironmentRole, LABEL_ADOPTABLE_BY, Tier};
use crate::api::organization::{BillingPlan, MemberRole};
use crate::api::{LABEL_ENVIRONMENT, LABEL_ORGANIZATION, LABEL_TIER};
use crate::provider::{
    DesiredEnvironment, ExternalClient, Observation, Observed, ObservedEnvironment, ProviderError,
    Readiness,
};
use crate::reasons;

/// Name of the ConfigMap apps read their environment settings from.
pub const CONFIG_MAP_NAME: &str = "bulkhead-environment";
/// Name of the NetworkPolicy that makes the organization's private network.
pub const NETWORK_POLICY_NAME: &str = "bulkhead-private-network";
/// Name of the ResourceQuota derived from the organization's plan.
pub const QUOTA_NAME: &str = "bulkhead-plan";
/// RoleBinding giving the operator its rights inside an environment namespace.
pub const OPERATOR_BINDING_NAME: &str = "bulkhead-operator";
/// Annotation on a namespace that existed before bulkhead adopted it: it is
/// never deleted with its Environment, only unlabelled.
pub const ANNOTATION_ADOPTED: &str = "bulkhead.dev/adopted";

const KINDS: [ChildKind; 5] = [
    NAMESPACE,
    ROLE_BINDING,
    NETWORK_POLICY,
    RESOURCE_QUOTA,
    CONFIG_MAP,
];

/// ClusterRole bulkhead ships for an environment role.
pub fn cluster_role_for(role: EnvironmentRole) -> String {
    format!("bulkhead-environment-{}", role.as_str())
}

/// The environment role an organization member gets in a tier: production
/// is least privilege, so plain members only read there.
pub fn member_role_in(tier: Tier, role: MemberRole) -> EnvironmentRole {
    match (role, tier) {
        (MemberRole::Admin, _) => EnvironmentRole::Admin,
        (MemberRole::Member, Tier::Production) => EnvironmentRole::Viewer,
        (MemberRole::Member, _) => EnvironmentRole::Developer,
        (MemberRole::Viewer, _) => EnvironmentRole::Viewer,
    }
}

/// ResourceQuota `spec.hard` per plan; `None` means no quota (enterprise).
///
/// | plan       | requests.cpu | requests.memory | requests.storage | PVCs | pods |
/// |------------|--------------|-----------------|------------------|------|------|
/// | free       | 2            | 4Gi             | 10Gi             | 2    | 20   |
/// | launch     | 8            | 16Gi            | 100Gi            | 10   | 100  |
/// | scale      | 32           | 64Gi            | 1Ti              | 50   | 500  |
/// | enterprise | no quota     |                 |                  |      |      |
pub fn plan_quota(plan: BillingPlan) -> Option<Value> {
    let (cpu, memory, storage, pvcs, pods) = match plan {
        BillingPlan::Free => ("2", "4Gi", "10Gi", "2", "20"),
        BillingPlan::Launch => ("8", "16Gi", "100Gi", "10", "100"),
        BillingPlan::Scale => ("32", "64Gi", "1Ti", "50", "500"),
        BillingPlan::Enterprise => return None,
    };
    Some(json!({
        "requests.cpu": cpu,
        "requests.memory": memory,
        "requests.storage": storage,
        "persistentvolumeclaims": pvcs,
        "pods": pods,
    }))
}

/// Kubernetes backend for Environments.
pub struct KubernetesEnvironments {
    children: Children,
}

impl KubernetesEnvironments {
    pub fn new(children: Children) -> Self {
        KubernetesEnvironments { children }
    }

    /// Builds every child. Looks at existing namespaces to decide whether
    /// each is ours (owned, deleted with the Environment), adopted, or
    /// another Environment's (an error).
    async fn desired_children(&self, d: &DesiredEnvironment) -> Result<Vec<Child>, ProviderError> {
        let env = d.owner.name.as_str();
        let mut out = Vec::new();
        for ns in &d.namespaces {
            let live = self.children.get(NAMESPACE, None, ns).await?;
            let mut adopted = false;
            if let Some(live) = &live {
                let labels = live.pointer("/metadata/labels");
                let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
                if let Some(other) = label(LABEL_ENVIRONMENT).filter(|o| *o != env) {
                    return Err(ProviderError::terminal(
                        reasons::NAMESPACE_TAKEN,
                        format!("namespace {ns} belongs to Environment {other}"),
                    ));
                }
                let ours = is_owned_by(live, &d.owner);
                if !ours {
                    // A namespace bulkhead did not create is adopted only
                    // when a platform admin opted it in for this very
                    // Environment; otherwise nothing is written anywhere.
                    match label(LABEL_ADOPTABLE_BY) {
                        Some(e) if e == env => {}
                        Some(other) => {
                            return Err(ProviderError::terminal(
                                reasons::NAMESPACE_OPTED_IN_ELSEWHERE,
                                format!(
                                    "namespace {ns} exists and is opted in for Environment {other} ({LABEL_ADOPTABLE_BY}={other}), not for {env}; nothing was written"
                                ),
                            ));
                        }
                        None => {
                            return Err(ProviderError::terminal(
                                reasons::NAMESPACE_NOT_OPTED_IN,
                                format!(
                                    "namespace {ns} exists and bulkhead did not create it, so nothing was written; to let Environment {env} adopt it, a cluster admin labels it: kubectl label namespace {ns} {LABEL_ADOPTABLE_BY}={env}"
                                ),
                            ));
                        }
                    }
                }
                adopted = is_adopted(live) || !ours;
            }
            let mut fields = json!({ "metadata": { "labels": {
                LABEL_ENVIRONMENT: env,
                LABEL_TIER: d.tier.as_str(),
                LABEL_ORGANIZATION: d.organization,
            }}});
            if adopted {
                fields["metadata"]["annotations"] = json!({ ANNOTATION_ADOPTED: "true" });
            }
            out.push(Child::new(NAMESPACE, None, ns, &d.owner, !adopted, fields));
            out.extend(self.namespace_children(d, ns));
        }
        Ok(out)
    }

    fn namespace_children(&self, d: &DesiredEnvironment, ns: &str) -> Vec<Child> {
        let mut out = Vec::new();
        // First the operator's own rights in this namespace (its Secrets
        // and workloads): the operator holds none cluster-wide, so every
        // other child of the namespace's DatabaseClusters depends on it.
        if let Some(grant) = &d.operator_grant {
            out.push(Child::new(
                ROLE_BINDING,
                Some(ns),
                OPERATOR_BINDING_NAME,
                &d.owner,
                true,
                json!({
                    "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": grant.cluster_role },
                    "subjects": [grant.subject],
                }),
            ));
        }
        // One RoleBinding per role, for explicit grants and for members.
        let mut grants: BTreeMap<EnvironmentRole, Vec<Value>> = BTreeMap::new();
        for grant in &d.access {
            let subjects = grants.entry(grant.role).or_default();
            for s in &grant.subjects {
                let mut subject = json!({ "kind": s.kind.as_str(), "name": s.name });
                if let Some(sns) = &s.namespace {
                    subject["namespace"] = json!(sns);
                } else {
                    subject["apiGroup"] = json!("rbac.authorization.k8s.io");
                }
                if !subjects.contains(&subject) {
                    subjects.push(subject);
                }
            }
        }
        let mut members: BTreeMap<EnvironmentRole, Vec<Value>> = BTreeMap::new();
        for m in &d.members {
            members
                .entry(member_role_in(d.tier, m.role))
                .or_default()
                .push(json!({
                    "kind": "User", "name": m.email, "apiGroup": "rbac.authorization.k8s.io",
                }));
        }
        for (prefix, bindings) in [("bulkhead-access", grants), ("bulkhead-members", members)] {
            for (role, subjects) in bindings {
                let name = format!("{prefix}-{}", role.as_str());
                out.push(role_binding(d, ns, &name, role, subjects));
            }
        }

        // The private network: the organization's namespaces, and the
        // allowed CIDRs, nobody else.
        let mut from = vec![
            json!({ "namespaceSelector": { "matchLabels": { LABEL_ORGANIZATION: d.organization } } }),
        ];
        for cidr in &d.allowed_cidrs {
            from.push(json!({ "ipBlock": { "cidr": cidr } }));
        }
        out.push(Child::new(
            NETWORK_POLICY,
            Some(ns),
            NETWORK_POLICY_NAME,
            &d.owner,
            true,
            json!({ "spec": { "podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{ "from": from }] } }),
        ));

        if let Some(hard) = d.plan.and_then(plan_quota) {
            out.push(Child::new(
                RESOURCE_QUOTA,
                Some(ns),
                QUOTA_NAME,
                &d.owner,
                true,
                json!({ "spec": { "hard": hard } }),
            ));
        }

        let mut data = BTreeMap::new();
        data.insert("BULKHEAD_ENVIRONMENT".to_string(), d.owner.name.clone());
        data.insert("BULKHEAD_TIER".to_string(), d.tier.as_str().to_string());
        data.insert(
            "BULKHEAD_ORGANIZATION".to_string(),
            d.organization_slug.clone(),
        );
        for (k, v) in &d.config.data {
            data.insert(k.clone(), v.clone());
        }
        for (flag, on) in &d.config.feature_flags {
            data.insert(feature_flag_key(flag), on.to_string());
        }
        if !d.config.secret_refs.is_empty() {
            let names: Vec<&str> = d
                .config
                .secret_refs
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            data.insert("BULKHEAD_SECRET_REFS".to_string(), names.join(","));
        }
        out.push(Child::new(
            CONFIG_MAP,
            Some(ns),
            CONFIG_MAP_NAME,
            &d.owner,
            true,
            json!({ "data": data }),
        ));
        out
    }
}

/// Whether a live namespace carries the adopted annotation.
fn is_adopted(namespace: &Value) -> bool {
    namespace
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_ADOPTED))
        .is_some()
}

/// `new-checkout` → `FEATURE_NEW_CHECKOUT`.
pub fn feature_flag_key(flag: &str) -> String {
    let upper: String = flag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("FEATURE_{upper}")
}

fn role_binding(
    d: &DesiredEnvironment,
    ns: &str,
    name: &str,
    role: EnvironmentRole,
    subjects: Vec<Value>,
) -> Child {
    Child::new(
        ROLE_BINDING,
        Some(ns),
        name,
        &d.owner,
        true,
        json!({
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role_for(role) },
            "subjects": subjects,
        }),
    )
}

#[async_trait]
impl ExternalClient for KubernetesEnvironments {
    type Desired = DesiredEnvironment;
    type Observed = ObservedEnvironment;

    async fn observe(&self, d: &DesiredEnvironment) -> Observed<Self> {
        let desired = self.desired_children(d).await?;
        let drift = self.children.drift(&desired, &KINDS, &d.owner).await?;
        if drift.existing == 0 {
            return Ok(Observation::Missing);
        }
        let mut active = Vec::new();
        let mut waiting = Vec::new();
        for ns in &d.namespaces {
            match self.children.get(NAMESPACE, None, ns).await? {
                Some(live)
                    if live.pointer("/status/phase").and_then(Value::as_str) == Some("Active") =>
                {
                    active.push(ns.clone())
                }
                Some(live) => waiting.push(format!(
                    "{ns} is {}",
                    live.pointer("/status/phase")
                        .and_then(Value::as_str)
                        .unwrap_or("not active")
                )),
                None => waiting.push(format!("{ns} does not exist yet")),
            }
        }
        let readiness = if waiting.is_empty() && drift.missing.is_empty() {
            Readiness::ready(format!("namespaces {} are active", active.join(", ")))
        } else if waiting.is_empty() {
            Readiness::not_ready(reasons::CREATING, drift.describe().join("; "))
        } else {
            Readiness::not_ready(reasons::WAITING, waiting.join("; "))
        };
        Ok(Observation::Exists {
            up_to_date: drift.is_clean(),
            drift: drift.describe(),
            readiness,
            observed: ObservedEnvironment { namespaces: active },
        })
    }

    async fn create(&self, d: &DesiredEnvironment) -> Result<(), ProviderError> {
        let desired = self.desired_children(d).await?;
        self.children.apply(&desired, &KINDS, &d.owner).await
    }

    async fn update(
        &self,
        d: &DesiredEnvironment,
        _observed: &ObservedEnvironment,
    ) -> Result<(), ProviderError> {
        self.create(d).await
    }

    async fn delete(&self, d: &DesiredEnvironment) -> Result<(), ProviderError> {
        // Inside the namespaces first, while they still carry the
        // environment label (admission lets the operator touch RoleBindings
        // only there) and while its own bulkhead-operator RoleBinding, which
        // lets it delete the rest, still exists: that one goes last.
        self.children
            .delete_owned(&[NETWORK_POLICY, RESOURCE_QUOTA, CONFIG_MAP], &d.owner)
            .await?;
        self.children
            .delete_owned(&[ROLE_BINDING], &d.owner)
            .await?;
        // Adopted namespaces stay: re-apply them with nothing, which drops
        // bulkhead's labels (server-side apply removes fields we no longer
        // set). The namespaces bulkhead made go.
        for ns in self.children.list_owned(&[NAMESPACE], &d.owner).await? {
            if is_adopted(&ns.body) {
                let bare = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns.name } });
                self.children
                    .apply_raw(ns.kind, None, &ns.name, &bare)
                    .await?;
            }
        }
        self.children.delete_owned(&[NAMESPACE], &d.owner).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_members_only_read() {
        assert_eq!(
            member_role_in(Tier::Production, MemberRole::Member),
            EnvironmentRole::Viewer
        );
        assert_eq!(
            member_role_in(Tier::Staging, MemberRole::Member),
            EnvironmentRole::Developer
        );
        assert_eq!(
            member_role_in(Tier::Production, MemberRole::Admin),
            EnvironmentRole::Admin
        );
    }

    #[test]
    fn feature_flags_become_env_style_keys() {
        assert_eq!(feature_flag_key("new-checkout"), "FEATURE_NEW_CHECKOUT");
    }

    #[test]
    fn enterprise_has_no_quota() {
        assert!(plan_quota(BillingPlan::Enterprise).is_none());
        assert_eq!(
            plan_quota(BillingPlan::Free).and_then(|q| q.get("pods").cloned()),
            Some(json!("20"))
        );
    }
}
