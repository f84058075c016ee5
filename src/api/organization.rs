//! Organization: a provider organization (Fly.io org, or a tenancy boundary in
//! the cluster) with its members, billing plan and tokens.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DNS_LABEL, DURATION_MESSAGE, DURATION_RULE, DeletionPolicy, ManagementPolicy, ProviderSpec,
    SecretWriteRef,
};

/// An Organization is one isolated tenancy at a provider: its own members
/// (invitation only), billing plan, private network and tokens. Keep
/// production, staging and development in separate Organizations.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "Organization",
    plural = "organizations",
    shortname = "org",
    category = "bulkhead",
    status = "OrganizationStatus",
    derive = "PartialEq",
    doc = "An Organization is one isolated tenancy at a provider: its own members, billing, private network and tokens.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider.type"),
    printcolumn(name = "Slug", type_ = "string", json_path = ".status.slug"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Synced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Synced\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name of an Organization must be at most 63 characters")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.slug) || (has(self.slug) && self.slug == oldSelf.slug)").message("spec.slug is immutable once set").field_path(".slug"))]
#[x_kube(validation = Rule::new("self.provider.type == oldSelf.provider.type").message("spec.provider.type is immutable: create a new Organization to move providers").field_path(".provider.type"))]
pub struct OrganizationSpec {
    /// The backend holding this organization and its credentials.
    #[serde(default)]
    pub provider: ProviderSpec,
    /// External name of the organization (a DNS label). Defaults to
    /// metadata.name. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. acme-production)"))]
    pub slug: Option<String>,
    /// Human-readable name shown by the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,
    /// Members of the organization, by email. Membership is by invitation;
    /// a member whose expiresAt has passed is removed and an Event is recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["email"]))]
    pub members: Vec<Member>,
    /// Billing plan and contact, where the backend exposes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<Billing>,
    /// Tokens minted by the provider and written to Secrets; rotated before
    /// expiry, revoked when removed from this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub tokens: Vec<TokenSpec>,
    /// What happens at the provider when this object is deleted. Defaults to
    /// Orphan: deleting an Organization object never deletes a real org
    /// unless asked to.
    #[serde(default = "default_org_deletion_policy")]
    pub deletion_policy: DeletionPolicy,
    /// Full (default) converges the provider; ObserveOnly adopts and reports.
    #[serde(default)]
    pub management_policy: ManagementPolicy,
}

fn default_org_deletion_policy() -> DeletionPolicy {
    DeletionPolicy::Orphan
}

impl Organization {
    /// The external name: spec.slug, else metadata.name.
    pub fn slug(&self) -> String {
        self.spec
            .slug
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }

    /// The slug the provider knows the organization by: the one it
    /// reported (Fly picks it, or it was adopted by external name), else
    /// the spec's.
    pub fn provider_slug(&self) -> String {
        self.status
            .as_ref()
            .and_then(|s| s.slug.clone())
            .unwrap_or_else(|| self.slug())
    }
}

/// CEL rule for an email address (one '@', a dot in the domain, no spaces).
const EMAIL_RULE: &str = r"self.matches('^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$')";
const EMAIL_MESSAGE: &str = "must be an email address such as alice@example.com";

/// Role of a member in an organization.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Manages members, billing and every environment.
    Admin,
    /// Works in the organization's environments (read-only in production).
    Member,
    /// Read-only everywhere.
    Viewer,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Admin => "admin",
            MemberRole::Member => "member",
            MemberRole::Viewer => "viewer",
        }
    }
}

/// A person in the organization.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Email address the invitation goes to; also the Kubernetes user name.
    #[schemars(length(min = 3, max = 254))]
    #[x_kube(validation = Rule::new(EMAIL_RULE).message(EMAIL_MESSAGE))]
    pub email: String,
    /// admin, member or viewer.
    pub role: MemberRole,
    /// Temporary access (contractors): the member is removed once this passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// Billing plans. For the kubernetes provider each plan is a ResourceQuota
/// (see the README's plan table).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BillingPlan {
    Free,
    Launch,
    Scale,
    Enterprise,
}

impl BillingPlan {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingPlan::Free => "free",
            BillingPlan::Launch => "launch",
            BillingPlan::Scale => "scale",
            BillingPlan::Enterprise => "enterprise",
        }
    }
}

/// Billing settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Billing {
    /// Plan: free, launch, scale or enterprise.
    pub plan: BillingPlan,
    /// Where invoices go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254))]
    #[x_kube(validation = Rule::new(EMAIL_RULE).message(EMAIL_MESSAGE))]
    pub billing_email: Option<String>,
}

/// What a token may do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Organization-wide token.
    Org,
    /// Deploy token for one app.
    Deploy,
}

/// A token minted by the provider and kept in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.scope != 'deploy' || has(self.app)").message("a deploy token requires app"))]
#[x_kube(validation = Rule::new("self.scope == 'deploy' || !has(self.app)").message("app is only valid for deploy tokens"))]
pub struct TokenSpec {
    /// Name of the token (unique in the organization).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,
    /// org or deploy.
    pub scope: TokenScope,
    /// App the deploy token is limited to (deploy scope only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub app: Option<String>,
    /// Lifetime of each minted token, as a Go duration (e.g. 720h). The token
    /// is rotated when less than a fifth of it remains.
    #[serde(default = "default_token_expiry")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[x_kube(validation = Rule::new(format!("!{DURATION_RULE} || duration(self) >= duration('1h')")).message("token expiry must be at least 1h"))]
    pub expiry: kube::core::Duration,
    /// Secret the token is written to.
    pub secret_ref: SecretWriteRef,
}

fn default_token_expiry() -> kube::core::Duration {
    std::time::Duration::from_secs(30 * 24 * 3600).into()
}

/// Observed state of an Organization.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationStatus {
    /// Ready, Synced.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// metadata.generation of the spec last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The provider's identifier of the organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "externalID")]
    pub external_id: Option<String>,
    /// The organization's slug at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// Members as the provider reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Tokens minted and when they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenStatus>,
    /// Environments bound to this organization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
}

/// State of a membership at the provider.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Invitation sent, not accepted yet.
    Invited,
    /// Member of the organization.
    Active,
}

/// A member as observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub email: String,
    pub role: MemberRole,
    pub state: MemberState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// A minted token (never its value).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    pub name: String,
    /// Secret holding the value, as namespace/name.
    pub secret: String,
    /// When the current value expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the current value was minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
}
