//! Organizations at Fly.io: the org itself, its members (invitations, then
//! roles once accepted) and its limited-access tokens, each written into
//! the Secret `spec.tokens[].secretRef` names.
//!
//! Fly picks an organization's slug from its name, so the slug bulkhead
//! records (`bulkhead.dev/external-name`) is what the create answered.
//! Before that is recorded, the organization is found by its name (which
//! bulkhead sets to `spec.slug`, so Fly's slug is the same unless taken).
//!
//! Which Fly token belongs to which spec token is kept without keeping the
//! token anywhere but its Secret: Fly tokens are named
//! `bulkhead:<Organization>:<token name>`, and the Secret carries the Fly
//! token ID in an annotation. A live token of that name whose ID no Secret
//! holds (superseded by a rotation, or minted by a call whose answer was
//! lost) is revoked.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::operations::{
    CREATE_INVITATION, CREATE_ORGANIZATION, CREATE_TOKEN, DELETE_INVITATION, DELETE_MEMBERSHIP,
    DELETE_ORGANIZATION, DELETE_TOKEN, ORGANIZATION, UPDATE_MEMBERSHIP,
};
use super::{CallError, FlySession, Operation, jittered};
use crate::api::organization::{
    MemberRole, MemberState, MemberStatus, TokenScope, TokenSpec, TokenStatus,
};
use crate::provider::kubernetes::children::SECRET;
use crate::provider::kubernetes::{Child, Children, is_owned_by};
use crate::provider::{
    DesiredOrganization, ExternalClient, Observation, Observed, ObservedOrganization,
    OrganizationClient, ProviderError, Readiness, Secret,
};
use crate::reasons;

/// Annotation on a token Secret: the ID of the Fly token it holds (an ID,
/// not a secret: it cannot authenticate).
pub const ANNOTATION_TOKEN_ID: &str = "bulkhead.dev/fly-token-id";

/// A token is replaced once less than this fraction of its lifetime is left.
const ROTATE_WHEN_LEFT: f64 = 1.0 / 3.0;

/// One Organization's client: the process's Fly API and this
/// Organization's credentials.
pub struct FlyOrganizations {
    fly: FlySession,
    children: Children,
}

impl FlyOrganizations {
    pub fn new(fly: FlySession, children: Children) -> Self {
        FlyOrganizations { fly, children }
    }

    async fn call(&self, op: &Operation, variables: Value) -> Result<Value, CallError> {
        self.fly.graphql(op, variables).await
    }

    /// The organization as Fly shows it, by slug or node ID.
    async fn fetch(&self, variables: Value) -> Result<Option<(RawOrg, String)>, ProviderError> {
        match self.call(&ORGANIZATION, variables).await {
            Ok(data) => {
                let answer: OrgAnswer = serde_json::from_value(data).map_err(unexpected)?;
                let viewer = answer.viewer.map(|v| v.email).unwrap_or_default();
                Ok(answer.organization.map(|o| (o, viewer)))
            }
            Err(CallError::NotFound(_)) => Ok(None),
            Err(CallError::Provider(e)) => Err(e),
        }
    }

    /// The organization bulkhead made (or would make) for `d` before its
    /// slug is recorded: the one under `spec.slug` named `spec.slug` that
    /// the credentials administer. Someone else's under that slug is not it.
    async fn find_by_name(
        &self,
        d: &DesiredOrganization,
    ) -> Result<Option<(RawOrg, String)>, ProviderError> {
        Ok(self
            .fetch(json!({ "slug": d.slug }))
            .await?
            .filter(|(o, _)| {
                o.name == d.slug && o.viewer_role == "admin" && o.org_type != "PERSONAL"
            }))
    }

    /// Where the object's organization is: under the recorded external name
    /// once there is one, else by name.
    async fn find(
        &self,
        d: &DesiredOrganization,
    ) -> Result<Option<(RawOrg, String)>, ProviderError> {
        match &d.external_name {
            Some(slug) => self.fetch(json!({ "slug": slug })).await,
            None => self.find_by_name(d).await,
        }
    }

    /// For each spec token, the Fly token ID its Secret holds (`None`: no
    /// Secret, or one without a token).
    async fn token_secrets(
        &self,
        d: &DesiredOrganization,
    ) -> Result<BTreeMap<String, Option<String>>, ProviderError> {
        let mut held = BTreeMap::new();
        for t in &d.tokens {
            let r = &t.secret_ref;
            let live = self
                .children
                .get(SECRET, Some(&r.namespace), &r.name)
                .await?;
            let id = match live {
                None => None,
                Some(secret) => {
                    if !is_owned_by(&secret, &d.owner) {
                        return Err(ProviderError::terminal(
                            reasons::SECRET_CONFLICT,
                            format!(
                                "token {}: Secret {}/{} exists and was not made by bulkhead for this Organization; \
                                 choose another secretRef or delete that Secret",
                                t.name, r.namespace, r.name
                            ),
                        ));
                    }
                    let has_token = secret
                        .pointer(&format!("/data/{}", r.key.replace('/', "~1")))
                        .and_then(Value::as_str)
                        .is_some_and(|v| !v.is_empty());
                    secret
                        .pointer(&format!(
                            "/metadata/annotations/{}",
                            ANNOTATION_TOKEN_ID.replace('/', "~1")
                        ))
                        .and_then(Value::as_str)
                        .filter(|_| has_token)
                        .map(str::to_string)
                }
            };
            held.insert(t.name.clone(), id);
        }
        Ok(held)
    }

    async fn mutate(&self, op: &Operation, variables: Value) -> Result<Value, ProviderError> {
        Ok(self.call(op, variables).await?)
    }

    /// A removal that finds nothing to remove has nothing left to do.
    async fn remove(&self, op: &Operation, variables: Value) -> Result<(), ProviderError> {
        match self.call(op, variables).await {
            Ok(_) | Err(CallError::NotFound(_)) => Ok(()),
            Err(CallError::Provider(e)) => Err(e),
        }
    }

    /// Mints the token for `t` and writes it into its Secret; returns the
    /// new token's ID. The token goes from Fly's answer into the Secret's
    /// data and nowhere else.
    async fn mint(
        &self,
        d: &DesiredOrganization,
        org_id: &str,
        t: &TokenSpec,
    ) -> Result<String, ProviderError> {
        let (profile, params) = match (t.scope, &t.app) {
            (TokenScope::Deploy, Some(app)) => ("deploy", json!({ "app_id": app })),
            _ => ("deploy_organization", Value::Null),
        };
        let data = self
            .mutate(
                &CREATE_TOKEN,
                json!({
                    "org": org_id,
                    "name": fly_token_name(d, &t.name),
                    "profile": profile,
                    "params": params,
                    "expiry": go_duration(t.expiry.into()),
                }),
            )
            .await?;
        let minted: MintedAnswer = serde_json::from_value(data).map_err(unexpected)?;
        let minted = minted.create_limited_access_token.limited_access_token;
        let token = Secret::new(minted.token);
        let r = &t.secret_ref;
        let child = Child::new(
            SECRET,
            Some(&r.namespace),
            &r.name,
            &d.owner,
            true,
            json!({
                "metadata": { "annotations": { ANNOTATION_TOKEN_ID: minted.id } },
                "type": "Opaque",
                "stringData": { r.key.clone(): token.expose() },
            }),
        );
        self.children.apply_child(&child).await?;
        info!(token = %t.name, secret = %format!("{}/{}", r.namespace, r.name), "minted Fly token");
        Ok(minted.id)
    }
}

fn unexpected(e: serde_json::Error) -> ProviderError {
    ProviderError::terminal(
        reasons::UNEXPECTED_RESPONSE,
        format!("Fly answered in an unexpected shape: {e}"),
    )
}

/// The name of a spec token's Fly token.
pub fn fly_token_name(d: &DesiredOrganization, token: &str) -> String {
    format!("{}{token}", token_prefix(d))
}

fn token_prefix(d: &DesiredOrganization) -> String {
    format!("bulkhead:{}:", d.owner.name)
}

/// A duration as Go's `time.ParseDuration` reads it (`720h0m0s` style,
/// whole seconds).
pub fn go_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    format!("{}h{}m{}s", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The role Fly has for a spec role: Fly knows ADMIN and MEMBER only, so a
/// viewer is a MEMBER there.
fn fly_role(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Admin => "ADMIN",
        MemberRole::Member | MemberRole::Viewer => "MEMBER",
    }
}

#[derive(Deserialize)]
struct OrgAnswer {
    viewer: Option<Viewer>,
    organization: Option<RawOrg>,
}

#[derive(Deserialize)]
struct Viewer {
    email: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawOrg {
    pub id: String,
    pub slug: String,
    pub name: String,
    #[serde(rename = "type")]
    pub org_type: String,
    pub viewer_role: String,
    pub members: Edges<RawMember>,
    pub invitations: Nodes<RawInvitation>,
    pub limited_access_tokens: Nodes<RawToken>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Edges<T> {
    #[serde(default = "Vec::new")]
    pub edges: Vec<T>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Nodes<T> {
    #[serde(default = "Vec::new")]
    pub nodes: Vec<T>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RawMember {
    pub role: String,
    pub node: Option<RawUser>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RawUser {
    pub id: String,
    pub email: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RawInvitation {
    pub id: String,
    pub email: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawToken {
    pub id: String,
    pub name: String,
    pub profile: String,
    #[serde(default)]
    pub profile_params: Value,
    pub created_at: String,
    pub expires_at: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MintedAnswer {
    create_limited_access_token: MintedPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MintedPayload {
    limited_access_token: MintedToken,
}

#[derive(Deserialize)]
struct MintedToken {
    id: String,
    token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatedAnswer {
    create_organization: CreatedPayload,
}

#[derive(Deserialize)]
struct CreatedPayload {
    organization: CreatedOrg,
}

#[derive(Deserialize)]
struct CreatedOrg {
    slug: String,
}

/// What converging an organization takes, from what Fly shows, the token
/// IDs the Secrets hold, and the time. Pure, so it is table-tested.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub invite: Vec<String>,
    /// (user ID, email, Fly role)
    pub set_role: Vec<(String, String, &'static str)>,
    /// (user ID, email)
    pub remove_member: Vec<(String, String)>,
    /// (invitation ID, email)
    pub withdraw: Vec<(String, String)>,
    /// (spec token name, why)
    pub mint: Vec<(String, &'static str)>,
    /// (Fly token ID, Fly token name)
    pub revoke: Vec<(String, String)>,
    pub members: Vec<MemberStatus>,
    pub tokens: Vec<TokenStatus>,
}

impl Plan {
    pub fn drift(&self) -> Vec<String> {
        let mut drift = Vec::new();
        drift.extend(self.invite.iter().map(|e| format!("invite {e}")));
        drift.extend(
            self.set_role
                .iter()
                .map(|(_, e, r)| format!("set role of {e} to {}", r.to_lowercase())),
        );
        drift.extend(
            self.remove_member
                .iter()
                .map(|(_, e)| format!("remove member {e}")),
        );
        drift.extend(
            self.withdraw
                .iter()
                .map(|(_, e)| format!("withdraw invitation of {e}")),
        );
        drift.extend(
            self.mint
                .iter()
                .map(|(t, why)| format!("mint token {t} ({why})")),
        );
        drift.extend(self.revoke.iter().map(|(_, n)| format!("revoke token {n}")));
        drift
    }
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

fn same_email(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether Fly's token `raw` is what spec token `t` asks for (scope and app).
fn token_matches(t: &TokenSpec, raw: &RawToken) -> bool {
    match (t.scope, &t.app) {
        (TokenScope::Deploy, Some(app)) => {
            raw.profile == "deploy"
                && raw.profile_params.get("app_id").and_then(Value::as_str) == Some(app.as_str())
        }
        _ => raw.profile == "deploy_organization",
    }
}

pub fn plan(
    d: &DesiredOrganization,
    org: &RawOrg,
    viewer_email: &str,
    held: &BTreeMap<String, Option<String>>,
    now: Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let fly_members: Vec<(&RawUser, &str)> = org
        .members
        .edges
        .iter()
        .filter_map(|m| m.node.as_ref().map(|u| (u, m.role.as_str())))
        .collect();
    for m in &d.members {
        let want = fly_role(m.role);
        let state = if let Some((user, role)) = fly_members
            .iter()
            .find(|(u, _)| same_email(&u.email, &m.email))
        {
            if *role != want {
                plan.set_role.push((user.id.clone(), m.email.clone(), want));
            }
            MemberState::Active
        } else if org
            .invitations
            .nodes
            .iter()
            .any(|i| same_email(&i.email, &m.email))
        {
            MemberState::Invited
        } else {
            // Not invited yet: status shows only what Fly has.
            plan.invite.push(m.email.clone());
            continue;
        };
        plan.members.push(MemberStatus {
            email: m.email.clone(),
            role: m.role,
            state,
            expires_at: m.expires_at.clone(),
        });
    }
    let wanted = |email: &str| d.members.iter().any(|m| same_email(&m.email, email));
    for (user, _) in &fly_members {
        // The identity bulkhead acts as stays: removing it would lock
        // bulkhead out of the organization it manages.
        if !wanted(&user.email) && !same_email(&user.email, viewer_email) {
            plan.remove_member
                .push((user.id.clone(), user.email.clone()));
        }
    }
    for i in &org.invitations.nodes {
        if !wanted(&i.email) {
            plan.withdraw.push((i.id.clone(), i.email.clone()));
        }
    }

    let prefix = token_prefix(d);
    let live: Vec<&RawToken> = org
        .limited_access_tokens
        .nodes
        .iter()
        .filter(|t| t.revoked_at.is_none() && t.name.starts_with(&prefix))
        .filter(|t| parse_time(&t.expires_at).is_none_or(|e| e > now))
        .collect();
    let mut current = Vec::new();
    for t in &d.tokens {
        let fly_name = fly_token_name(d, &t.name);
        let held_id = held.get(&t.name).cloned().flatten();
        let found = held_id
            .as_deref()
            .and_then(|id| live.iter().find(|raw| raw.id == id && raw.name == fly_name));
        let Some(raw) = found else {
            let why = if held_id.is_some() {
                "revoked or expired at Fly"
            } else {
                "no token in its Secret"
            };
            plan.mint.push((t.name.clone(), why));
            continue;
        };
        current.push(raw.id.clone());
        let (issued, expires) = (parse_time(&raw.created_at), parse_time(&raw.expires_at));
        plan.tokens.push(TokenStatus {
            name: t.name.clone(),
            secret: format!("{}/{}", t.secret_ref.namespace, t.secret_ref.name),
            expires_at: expires.map(Time),
            issued_at: issued.map(Time),
        });
        if !token_matches(t, raw) {
            plan.mint.push((t.name.clone(), "scope or app changed"));
        } else if let (Some(issued), Some(expires)) = (issued, expires) {
            let lifetime = expires.as_second() - issued.as_second();
            let left = expires.as_second() - now.as_second();
            if lifetime > 0 && (left as f64) < lifetime as f64 * ROTATE_WHEN_LEFT {
                plan.mint.push((t.name.clone(), "due for rotation"));
            }
        }
    }
    // Superseded by a rotation, minted by a call whose answer was lost, or
    // removed from the spec: a live token no Secret holds.
    for raw in live {
        if !current.contains(&raw.id) {
            plan.revoke.push((raw.id.clone(), raw.name.clone()));
        }
    }
    plan
}

#[async_trait]
impl ExternalClient for FlyOrganizations {
    type Desired = DesiredOrganization;
    type Observed = ObservedOrganization;

    async fn observe(&self, d: &DesiredOrganization) -> Observed<Self> {
        let Some((org, viewer)) = self.find(d).await? else {
            return Ok(Observation::Missing);
        };
        let held = self.token_secrets(d).await?;
        let plan = plan(d, &org, &viewer, &held, Timestamp::now());
        let drift = plan.drift();
        Ok(Observation::Exists {
            up_to_date: drift.is_empty(),
            drift,
            readiness: Readiness::ready(format!("Fly organization {} exists", org.slug)),
            observed: ObservedOrganization {
                external_id: Some(org.id),
                members: plan.members,
                slug: Some(org.slug),
                tokens: plan.tokens,
            },
        })
    }

    async fn create(&self, d: &DesiredOrganization) -> Result<(), ProviderError> {
        self.create_named(d).await.map(|_| ())
    }

    /// Guarded by a lookup by name before every attempt, so a retry after a
    /// lost answer finds the organization the first attempt made instead of
    /// making a second.
    async fn create_named(&self, d: &DesiredOrganization) -> Result<Option<String>, ProviderError> {
        let attempts = self.fly.settings().attempts.max(1);
        let mut attempt = 0;
        loop {
            if let Some((org, _)) = self.find_by_name(d).await? {
                return Ok(Some(org.slug));
            }
            match self
                .call(&CREATE_ORGANIZATION, json!({ "name": d.slug }))
                .await
            {
                Ok(data) => {
                    let created: CreatedAnswer =
                        serde_json::from_value(data).map_err(unexpected)?;
                    return Ok(Some(created.create_organization.organization.slug));
                }
                Err(CallError::Provider(e)) if !e.is_terminal() && attempt + 1 < attempts => {
                    tokio::time::sleep(jittered(self.fly.settings().backoff, attempt)).await;
                    attempt += 1;
                    // The create may have happened: the lookup above runs
                    // again before the next attempt.
                    tracing::debug!(error = %e, attempt, "Fly createOrganization failed; looking up before retrying");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn update(
        &self,
        d: &DesiredOrganization,
        observed: &ObservedOrganization,
    ) -> Result<(), ProviderError> {
        let variables = match &observed.external_id {
            Some(id) => json!({ "id": id }),
            None => json!({ "slug": observed.slug.clone().unwrap_or_else(|| d.slug.clone()) }),
        };
        let Some((org, viewer)) = self.fetch(variables).await? else {
            return Err(ProviderError::transient(
                reasons::PROVIDER_ERROR,
                "the Fly organization went away while being updated",
            ));
        };
        let mut held = self.token_secrets(d).await?;
        let todo = plan(d, &org, &viewer, &held, Timestamp::now());
        for email in &todo.invite {
            self.mutate(&CREATE_INVITATION, json!({ "org": org.id, "email": email }))
                .await?;
        }
        for (user, _, role) in &todo.set_role {
            self.mutate(
                &UPDATE_MEMBERSHIP,
                json!({ "org": org.id, "user": user, "role": role }),
            )
            .await?;
        }
        for (user, _) in &todo.remove_member {
            self.remove(&DELETE_MEMBERSHIP, json!({ "org": org.id, "user": user }))
                .await?;
        }
        for (invitation, _) in &todo.withdraw {
            self.remove(&DELETE_INVITATION, json!({ "id": invitation }))
                .await?;
        }
        for (name, _) in &todo.mint {
            let Some(t) = d.tokens.iter().find(|t| &t.name == name) else {
                continue;
            };
            let id = self.mint(d, &org.id, t).await?;
            held.insert(name.clone(), Some(id));
        }
        // Revoked only now that every Secret holds its new token, so a
        // rotation never leaves a Secret with a dead one.
        let after = plan(d, &org, &viewer, &held, Timestamp::now());
        let current: Vec<&str> = held.values().flatten().map(String::as_str).collect();
        for (id, name) in after
            .revoke
            .iter()
            .filter(|(id, _)| !current.contains(&id.as_str()))
        {
            self.remove(&DELETE_TOKEN, json!({ "id": id })).await?;
            info!(token = %name, "revoked Fly token");
        }
        Ok(())
    }

    async fn delete(&self, d: &DesiredOrganization) -> Result<(), ProviderError> {
        let Some((org, _)) = self.find(d).await? else {
            return Ok(());
        };
        self.remove(&DELETE_ORGANIZATION, json!({ "id": org.id }))
            .await
    }

    fn deterministic_names(&self) -> bool {
        false
    }
}

impl OrganizationClient for FlyOrganizations {
    fn mints_tokens(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::SecretWriteRef;
    use crate::api::organization::Member;
    use crate::provider::Owner;

    fn desired(members: &[(&str, MemberRole)], tokens: &[&str]) -> DesiredOrganization {
        DesiredOrganization {
            owner: Owner {
                api_version: "bulkhead.dev/v1alpha1".into(),
                kind: "Organization".into(),
                name: "acme".into(),
                uid: "u-1".into(),
                namespace: None,
            },
            slug: "acme".into(),
            display_name: None,
            members: members
                .iter()
                .map(|(e, r)| Member {
                    email: e.to_string(),
                    role: *r,
                    expires_at: None,
                })
                .collect(),
            billing: None,
            environments: vec![],
            external_name: Some("acme".into()),
            tokens: tokens
                .iter()
                .map(|n| TokenSpec {
                    name: n.to_string(),
                    scope: TokenScope::Org,
                    app: None,
                    expiry: std::time::Duration::from_secs(3 * 3600).into(),
                    secret_ref: SecretWriteRef {
                        namespace: "ci".into(),
                        name: format!("{n}-token"),
                        key: "token".into(),
                    },
                })
                .collect(),
        }
    }

    fn org(
        members: &[(&str, &str, &str)],
        invited: &[&str],
        tokens: &[(&str, &str, i64, i64)],
    ) -> RawOrg {
        let ts = |s: i64| {
            Timestamp::from_second(s)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        RawOrg {
            id: "org-1".into(),
            slug: "acme".into(),
            name: "acme".into(),
            org_type: "SHARED".into(),
            viewer_role: "admin".into(),
            members: Edges {
                edges: members
                    .iter()
                    .map(|(id, email, role)| RawMember {
                        role: role.to_string(),
                        node: Some(RawUser {
                            id: id.to_string(),
                            email: email.to_string(),
                        }),
                    })
                    .collect(),
            },
            invitations: Nodes {
                nodes: invited
                    .iter()
                    .map(|e| RawInvitation {
                        id: format!("inv-{e}"),
                        email: e.to_string(),
                    })
                    .collect(),
            },
            limited_access_tokens: Nodes {
                nodes: tokens
                    .iter()
                    .map(|(id, name, created, expires)| RawToken {
                        id: id.to_string(),
                        name: name.to_string(),
                        profile: "deploy_organization".into(),
                        profile_params: Value::Null,
                        created_at: ts(*created),
                        expires_at: ts(*expires),
                        revoked_at: None,
                    })
                    .collect(),
            },
        }
    }

    const NOW: i64 = 2_000_000_000;
    const ADMIN: (&str, &str, &str) = ("u-admin", "admin@bulkhead.test", "ADMIN");

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn members_are_invited_then_given_their_role_and_others_removed() {
        let d = desired(
            &[
                ("new@x.io", MemberRole::Member),
                ("pending@x.io", MemberRole::Admin),
                ("joined@x.io", MemberRole::Admin),
                ("viewer@x.io", MemberRole::Viewer),
            ],
            &[],
        );
        let o = org(
            &[
                ADMIN,
                ("u-j", "joined@x.io", "MEMBER"),
                ("u-v", "viewer@x.io", "MEMBER"),
                ("u-gone", "gone@x.io", "MEMBER"),
            ],
            &["pending@x.io", "stale@x.io"],
            &[],
        );
        let p = plan(&d, &o, "admin@bulkhead.test", &BTreeMap::new(), now());
        assert_eq!(p.invite, ["new@x.io"]);
        assert_eq!(
            p.set_role,
            [("u-j".to_string(), "joined@x.io".to_string(), "ADMIN")]
        );
        assert_eq!(
            p.remove_member,
            [("u-gone".to_string(), "gone@x.io".to_string())]
        );
        assert_eq!(
            p.withdraw,
            [("inv-stale@x.io".to_string(), "stale@x.io".to_string())]
        );
        let states: Vec<_> = p
            .members
            .iter()
            .map(|m| (m.email.as_str(), m.state))
            .collect();
        assert_eq!(
            states,
            [
                ("pending@x.io", MemberState::Invited),
                ("joined@x.io", MemberState::Active),
                ("viewer@x.io", MemberState::Active),
            ]
        );
    }

    #[test]
    fn tokens_are_minted_kept_rotated_and_revoked() {
        let d = desired(&[], &["ci", "fresh", "old", "gone-at-fly"]);
        let name = |n: &str| fly_token_name(&d, n);
        let o = org(
            &[ADMIN],
            &[],
            &[
                // 3h lifetime, 2h left: kept.
                ("t-ci", &name("ci"), NOW - 3600, NOW + 7200),
                // 3h lifetime, 30m left: rotated.
                ("t-old", &name("old"), NOW - 9000, NOW + 1800),
                // Removed from the spec.
                ("t-removed", &name("removed"), NOW - 60, NOW + 3600),
                // Someone else's token: not bulkhead's to revoke.
                ("t-other", "laptop", NOW - 60, NOW + 3600),
            ],
        );
        let held: BTreeMap<_, _> = [
            ("ci", Some("t-ci")),
            ("fresh", None),
            ("old", Some("t-old")),
            ("gone-at-fly", Some("t-revoked")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect();
        let p = plan(&d, &o, "admin@bulkhead.test", &held, now());
        assert_eq!(
            p.mint,
            [
                ("fresh".to_string(), "no token in its Secret"),
                ("old".to_string(), "due for rotation"),
                ("gone-at-fly".to_string(), "revoked or expired at Fly"),
            ]
        );
        assert_eq!(p.revoke, [("t-removed".to_string(), name("removed"))]);
        let tokens: Vec<_> = p
            .tokens
            .iter()
            .map(|t| (t.name.as_str(), t.secret.as_str()))
            .collect();
        assert_eq!(tokens, [("ci", "ci/ci-token"), ("old", "ci/old-token")]);
        assert!(p.tokens[0].expires_at.is_some() && p.tokens[0].issued_at.is_some());
    }

    #[test]
    fn an_up_to_date_organization_has_no_drift() {
        let d = desired(&[("a@x.io", MemberRole::Admin)], &[]);
        let o = org(&[ADMIN, ("u-a", "a@x.io", "ADMIN")], &[], &[]);
        let p = plan(&d, &o, "admin@bulkhead.test", &BTreeMap::new(), now());
        assert!(p.drift().is_empty(), "{:?}", p.drift());
    }

    #[test]
    fn expiry_is_sent_as_a_go_duration() {
        assert_eq!(
            go_duration(std::time::Duration::from_secs(720 * 3600)),
            "720h0m0s"
        );
        assert_eq!(go_duration(std::time::Duration::from_secs(3661)), "1h1m1s");
    }
}
