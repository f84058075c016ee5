//! GraphQL root fields the Fly provider uses, against the emulator's state.
//! Each returns plain JSON holding every field the emulator knows for that
//! object; `graphql::Execution` projects it onto the selection set.

use apollo_compiler::ast::OperationType;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use crate::auth::{Principal, parse_go_duration};
use crate::graphql::{FieldError, RootResolver};
use crate::ids;
use crate::state::{
    App, Invitation, Membership, OrgType, Organization, Role, SshCertificate, State, Token,
    TokenScope, User,
};

/// Fly's default lifetime of a limited-access token when no `expiry` is
/// given (20 years, as `fly tokens create` documents).
const DEFAULT_TOKEN_HOURS: i64 = 175_200;

/// The image tags `latestImageTag` knows; other repositories are not found.
const IMAGE_TAGS: &[(&str, &str)] = &[
    ("flyio/postgres-flex", "v0.0.66"),
    ("flyio/postgres", "v0.0.41"),
    ("flyio/postgres-standalone", "v0.0.9"),
];

pub struct Resolver<'a> {
    pub state: &'a mut State,
    pub rng: &'a mut StdRng,
    pub principal: &'a Principal,
    pub now: DateTime<Utc>,
}

fn ts(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn input(args: &Map<String, Value>) -> Result<&Map<String, Value>, FieldError> {
    args.get("input")
        .and_then(Value::as_object)
        .ok_or_else(|| FieldError::new("VALIDATION", "input is required"))
}

fn str_arg<'v>(map: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    map.get(name).and_then(Value::as_str)
}

fn required<'v>(map: &'v Map<String, Value>, name: &str) -> Result<&'v str, FieldError> {
    str_arg(map, name).ok_or_else(|| FieldError::new("VALIDATION", format!("{name} is required")))
}

fn not_found(what: &str, key: &str) -> FieldError {
    FieldError::new(
        "NOT_FOUND",
        format!("Could not find {what} with id or slug {key:?}"),
    )
}

/// The app whose id or name is `app_ref`.
fn app_by_ref<'s>(state: &'s State, app_ref: &str) -> Result<&'s App, FieldError> {
    state
        .apps
        .values()
        .find(|a| a.id == app_ref || a.name == app_ref)
        .ok_or_else(|| not_found("App", app_ref))
}

fn unauthorized(what: &str) -> FieldError {
    FieldError::new("UNAUTHORIZED", format!("You are not authorized to {what}"))
}

pub fn user_json(user: &User) -> Value {
    json!({
        "__typename": "User",
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "username": user.name,
        "createdAt": ts(user.created_at),
    })
}

fn connection(type_prefix: &str, edges: Vec<Value>, nodes: Vec<Value>) -> Value {
    let total = nodes.len();
    json!({
        "__typename": format!("{type_prefix}Connection"),
        "edges": edges,
        "nodes": nodes,
        "totalCount": total,
        "pageInfo": {
            "__typename": "PageInfo",
            "hasNextPage": false,
            "hasPreviousPage": false,
            "startCursor": if total > 0 { json!("0") } else { Value::Null },
            "endCursor": if total > 0 { json!((total - 1).to_string()) } else { Value::Null },
        },
    })
}

/// A connection whose edges carry nothing but the cursor and the node.
fn node_connection(type_prefix: &str, nodes: Vec<Value>) -> Value {
    let edges = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            json!({"__typename": format!("{type_prefix}Edge"), "cursor": i.to_string(), "node": node})
        })
        .collect();
    connection(type_prefix, edges, nodes)
}

fn org_ref_json(org: &Organization) -> Value {
    json!({
        "__typename": "Organization",
        "id": org.id,
        "slug": org.slug,
        "rawSlug": org.slug,
        "name": org.name,
        "type": org.org_type.as_graphql(),
        "internalNumericId": org.internal_numeric_id.to_string(),
    })
}

fn invitation_json(state: &State, org: &Organization, invitation: &Invitation) -> Value {
    let inviter = state
        .users
        .get(&invitation.inviter_id)
        .map(user_json)
        .unwrap_or(Value::Null);
    json!({
        "__typename": "OrganizationInvitation",
        "id": invitation.id,
        "email": invitation.email,
        "createdAt": ts(invitation.created_at),
        "redeemed": invitation.redeemed_at.is_some(),
        "redeemedAt": invitation.redeemed_at.map(ts),
        "inviter": inviter,
        "organization": org_ref_json(org),
    })
}

fn token_json(state: &State, token: &Token, with_secret: bool) -> Value {
    let org = state
        .organizations
        .get(&token.org_id)
        .map(org_ref_json)
        .unwrap_or(Value::Null);
    let user = state
        .users
        .get(&token.user_id)
        .map(user_json)
        .unwrap_or(Value::Null);
    // Fly shows a token's secret once, when it is minted; listings carry
    // no usable credential.
    let (secret, header) = if with_secret {
        (
            Value::String(token.secret.clone()),
            Value::String(format!("FlyV1 {}", token.secret)),
        )
    } else {
        (Value::String(String::new()), Value::Null)
    };
    json!({
        "__typename": "LimitedAccessToken",
        "id": token.id,
        "name": token.name,
        "profile": token.profile,
        "profileParams": token.profile_params,
        "createdAt": ts(token.created_at),
        "expiresAt": ts(token.expires_at),
        "revokedAt": token.revoked_at.map(ts),
        "revokedBy": token.revoked_by,
        "token": secret,
        "tokenHeader": header,
        "organization": org,
        "user": user,
    })
}

pub fn org_json(
    state: &State,
    org: &Organization,
    principal: &Principal,
    now: DateTime<Utc>,
) -> Value {
    let mut member_edges = Vec::new();
    let mut member_nodes = Vec::new();
    for (index, membership) in org.members.iter().enumerate() {
        let Some(user) = state.users.get(&membership.user_id) else {
            continue;
        };
        member_edges.push(json!({
            "__typename": "OrganizationMembershipsEdge",
            "cursor": index.to_string(),
            "role": membership.role.as_graphql(),
            "joinedAt": ts(membership.joined_at),
            "alertsEnabled": "ENABLED",
            "node": user_json(user),
        }));
        member_nodes.push(user_json(user));
    }
    let pending: Vec<&Invitation> = org
        .invitations
        .iter()
        .filter(|i| i.redeemed_at.is_none())
        .collect();
    let invitation_nodes: Vec<Value> = pending
        .iter()
        .map(|i| invitation_json(state, org, i))
        .collect();
    let token_nodes: Vec<Value> = state
        .tokens
        .iter()
        .filter(|t| t.org_id == org.id && t.revoked_at.is_none() && t.expires_at > now)
        .map(|t| token_json(state, t, false))
        .collect();
    let viewer_role = match principal {
        Principal::User { user_id } => match org.membership(user_id).map(|m| m.role) {
            Some(Role::Admin) => "admin",
            Some(Role::Member) => "member",
            None => "",
        },
        _ => "",
    };
    let mut value = org_ref_json(org);
    if let Some(obj) = value.as_object_mut() {
        obj.insert("viewerRole".into(), json!(viewer_role));
        obj.insert(
            "members".into(),
            connection("OrganizationMemberships", member_edges, member_nodes),
        );
        obj.insert(
            "invitations".into(),
            node_connection("OrganizationInvitation", invitation_nodes),
        );
        obj.insert(
            "limitedAccessTokens".into(),
            node_connection("LimitedAccessToken", token_nodes),
        );
    }
    value
}

impl RootResolver for Resolver<'_> {
    fn resolve(
        &mut self,
        operation: OperationType,
        field: &str,
        args: &Map<String, Value>,
    ) -> Result<Value, FieldError> {
        if let (OperationType::Mutation, Some((typename, mutation))) =
            (operation, Self::mutation(field))
        {
            let input = input(args)?;
            let fields = mutation(self, input)?;
            return Ok(payload(typename, input, fields));
        }
        match (operation, field) {
            (OperationType::Query, "organization") => self.organization(args),
            (OperationType::Query, "viewer") => self.viewer(),
            (OperationType::Query, "latestImageTag") => latest_image_tag(args),
            (op, name) => {
                let root = match op {
                    OperationType::Query => "Queries",
                    OperationType::Mutation => "Mutations",
                    OperationType::Subscription => "Subscriptions",
                };
                Err(FieldError::new(
                    "NOT_IMPLEMENTED",
                    format!("not implemented in the emulator: {root}.{name}"),
                ))
            }
        }
    }
}

/// A mutation's payload: its `__typename`, the `clientMutationId` the
/// input carried (or null), then the mutation's own `fields` (a JSON
/// object) in order.
fn payload(typename: &str, input: &Map<String, Value>, fields: Value) -> Value {
    let client_mutation_id = input
        .get("clientMutationId")
        .cloned()
        .unwrap_or(Value::Null);
    let mut payload = Map::new();
    payload.insert("__typename".into(), json!(typename));
    payload.insert("clientMutationId".into(), client_mutation_id);
    if let Value::Object(fields) = fields {
        payload.extend(fields);
    }
    Value::Object(payload)
}

fn latest_image_tag(args: &Map<String, Value>) -> Result<Value, FieldError> {
    let repository = required(args, "repository")?;
    IMAGE_TAGS
        .iter()
        .find(|(repo, _)| *repo == repository)
        .map(|(_, tag)| json!(tag))
        .ok_or_else(|| {
            FieldError::new(
                "NOT_FOUND",
                format!("no image tags for repository {repository:?}"),
            )
        })
}

/// A mutation: it reads its `input` argument and answers its payload's
/// own fields (`payload` adds `__typename` and `clientMutationId`).
type Mutation<'s> = fn(&mut Resolver<'s>, &Map<String, Value>) -> Result<Value, FieldError>;

impl<'s> Resolver<'s> {
    /// The mutation field's payload type and resolver.
    fn mutation(field: &str) -> Option<(&'static str, Mutation<'s>)> {
        let mutation: (&str, Mutation<'s>) = match field {
            "createOrganization" => ("CreateOrganizationPayload", Self::create_organization),
            "deleteOrganization" => ("DeleteOrganizationPayload", Self::delete_organization),
            "createOrganizationInvitation" => (
                "CreateOrganizationInvitationPayload",
                Self::create_invitation,
            ),
            "deleteOrganizationInvitation" => (
                "DeleteOrganizationInvitationPayload",
                Self::delete_invitation,
            ),
            "updateOrganizationMembership" => (
                "UpdateOrganizationMembershipPayload",
                Self::update_membership,
            ),
            "deleteOrganizationMembership" => (
                "DeleteOrganizationMembershipPayload",
                Self::delete_membership,
            ),
            "createLimitedAccessToken" => ("CreateLimitedAccessTokenPayload", Self::create_token),
            "deleteLimitedAccessToken" => ("DeleteLimitedAccessTokenPayload", Self::delete_token),
            "enablePostgresConsul" => ("EnablePostgresConsulPayload", Self::enable_postgres_consul),
            "issueCertificate" => ("IssueCertificatePayload", Self::issue_certificate),
            _ => return None,
        };
        Some(mutation)
    }

    /// Resolves an organization node ID the principal may see.
    fn org_id_for(&self, id: &str) -> Result<String, FieldError> {
        let org = self
            .state
            .organizations
            .get(id)
            .ok_or_else(|| not_found("Organization", id))?;
        if !self.principal.can_use_org(self.state, &org.id) {
            return Err(unauthorized("access this organization"));
        }
        Ok(org.id.clone())
    }

    fn require_admin(&self, org_id: &str) -> Result<(), FieldError> {
        if self.principal.is_org_admin(self.state, org_id) {
            Ok(())
        } else {
            Err(unauthorized(
                "manage this organization (admin role required)",
            ))
        }
    }

    fn org_value(&self, org_id: &str) -> Value {
        self.state
            .organizations
            .get(org_id)
            .map(|o| org_json(self.state, o, self.principal, self.now))
            .unwrap_or(Value::Null)
    }

    fn viewer(&self) -> Result<Value, FieldError> {
        let user_id = self.principal.user_id(self.state);
        self.state
            .users
            .get(&user_id)
            .map(user_json)
            .ok_or_else(|| unauthorized("view the viewer with this token"))
    }

    fn organization(&self, args: &Map<String, Value>) -> Result<Value, FieldError> {
        let found = if let Some(id) = str_arg(args, "id") {
            self.state.organizations.get(id)
        } else if let Some(slug) = str_arg(args, "slug").or_else(|| str_arg(args, "name")) {
            match self.state.org_by_slug(slug) {
                Some(org) => Some(org),
                None if slug == "personal" => {
                    let user_id = self.principal.user_id(self.state);
                    self.state.personal_org_of(&user_id)
                }
                None => None,
            }
        } else {
            return Err(FieldError::new(
                "VALIDATION",
                "one of id, slug or name is required",
            ));
        };
        let key = str_arg(args, "id")
            .or_else(|| str_arg(args, "slug"))
            .or_else(|| str_arg(args, "name"))
            .unwrap_or_default();
        let org = found.ok_or_else(|| not_found("Organization", key))?;
        if !self.principal.can_use_org(self.state, &org.id) {
            return Err(unauthorized("access this organization"));
        }
        Ok(org_json(self.state, org, self.principal, self.now))
    }

    fn create_organization(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let name = required(input, "name")?.trim().to_string();
        if name.is_empty() {
            return Err(FieldError::new("VALIDATION", "name can't be blank"));
        }
        let Principal::User { user_id } = self.principal else {
            return Err(unauthorized(
                "create organizations with a limited-access token",
            ));
        };
        // The server picks the slug; a taken one gets a numeric suffix.
        let base = ids::slugify(&name);
        let mut slug = base.clone();
        let mut suffix = 1;
        while slug == "personal" || self.state.org_by_slug(&slug).is_some() {
            slug = format!("{base}-{suffix}");
            suffix += 1;
        }
        let id = ids::node_id(self.rng);
        let numeric = self.state.next_numeric_id();
        let org = Organization {
            id: id.clone(),
            internal_numeric_id: numeric,
            slug,
            name,
            org_type: OrgType::Shared,
            created_at: self.now,
            members: vec![Membership {
                user_id: user_id.clone(),
                role: Role::Admin,
                joined_at: self.now,
            }],
            invitations: Vec::new(),
        };
        self.state.organizations.insert(id.clone(), org);
        // The payload's token is an organization-wide token for the new org.
        let token = self.mint(
            &id,
            "org-create",
            "deploy_organization",
            Value::Null,
            TokenScope::Organization,
            None,
        )?;
        Ok(json!({
            "organization": self.org_value(&id),
            "token": token.secret,
        }))
    }

    fn delete_organization(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let id = required(input, "organizationId")?;
        let org_id = self.org_id_for(id)?;
        self.require_admin(&org_id)?;
        if self
            .state
            .organizations
            .get(&org_id)
            .is_some_and(|o| o.org_type == OrgType::Personal)
        {
            return Err(FieldError::new(
                "VALIDATION",
                "personal organizations cannot be deleted",
            ));
        }
        if self.state.apps.values().any(|a| a.org_id == org_id) {
            return Err(FieldError::new(
                "VALIDATION",
                "organization still has apps; delete them first",
            ));
        }
        self.state.organizations.remove(&org_id);
        let now = self.now;
        for token in self.state.tokens.iter_mut().filter(|t| t.org_id == org_id) {
            token.revoked_at.get_or_insert(now);
        }
        Ok(json!({"deletedOrganizationId": org_id}))
    }

    fn create_invitation(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let org_id = self.org_id_for(required(input, "organizationId")?)?;
        self.require_admin(&org_id)?;
        let email = required(input, "email")?.trim().to_string();
        if !email.contains('@') {
            return Err(FieldError::new(
                "VALIDATION",
                format!("{email:?} is not an email address"),
            ));
        }
        let inviter_id = self.principal.user_id(self.state);
        let id = ids::node_id(self.rng);
        let now = self.now;
        let state = &mut *self.state;
        let existing_member = state
            .user_by_email(&email)
            .map(|u| u.id.clone())
            .and_then(|uid| {
                state
                    .organizations
                    .get(&org_id)
                    .and_then(|o| o.membership(&uid))
                    .map(|_| ())
            });
        let org = state
            .organizations
            .get_mut(&org_id)
            .ok_or_else(|| not_found("Organization", &org_id))?;
        if org.org_type == OrgType::Personal {
            return Err(FieldError::new(
                "VALIDATION",
                "personal organizations cannot take invitations",
            ));
        }
        if existing_member.is_some() {
            return Err(FieldError::new(
                "VALIDATION",
                format!("{email} is already a member"),
            ));
        }
        if org
            .invitations
            .iter()
            .any(|i| i.email == email && i.redeemed_at.is_none())
        {
            return Err(FieldError::new(
                "VALIDATION",
                format!("{email} has already been invited"),
            ));
        }
        org.invitations.push(Invitation {
            id: id.clone(),
            email,
            inviter_id,
            created_at: now,
            redeemed_at: None,
        });
        let invitation = state
            .organizations
            .get(&org_id)
            .and_then(|org| {
                org.invitations
                    .iter()
                    .find(|i| i.id == id)
                    .map(|i| invitation_json(state, org, i))
            })
            .unwrap_or(Value::Null);
        Ok(json!({"invitation": invitation}))
    }

    fn delete_invitation(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let invitation_id = required(input, "invitationId")?;
        let org_id = self
            .state
            .organizations
            .values()
            .find(|o| o.invitations.iter().any(|i| i.id == invitation_id))
            .map(|o| o.id.clone())
            .ok_or_else(|| not_found("OrganizationInvitation", invitation_id))?;
        self.org_id_for(&org_id)?;
        self.require_admin(&org_id)?;
        if let Some(org) = self.state.organizations.get_mut(&org_id) {
            org.invitations.retain(|i| i.id != invitation_id);
        }
        Ok(json!({"organization": self.org_value(&org_id)}))
    }

    fn member_target(&self, input: &Map<String, Value>) -> Result<(String, String), FieldError> {
        let org_id = self.org_id_for(required(input, "organizationId")?)?;
        self.require_admin(&org_id)?;
        let user_id = required(input, "userId")?.to_string();
        let is_member = self
            .state
            .organizations
            .get(&org_id)
            .is_some_and(|o| o.membership(&user_id).is_some());
        if !is_member {
            // Invitations carry no user: a role can only be set once the
            // invitation was accepted and the user is a member.
            return Err(FieldError::new(
                "NOT_FOUND",
                format!("user {user_id:?} is not a member of this organization"),
            ));
        }
        Ok((org_id, user_id))
    }

    fn update_membership(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let (org_id, user_id) = self.member_target(input)?;
        let role = required(input, "role")
            .ok()
            .and_then(Role::from_graphql)
            .ok_or_else(|| FieldError::new("VALIDATION", "role must be ADMIN or MEMBER"))?;
        if let Some(m) = self
            .state
            .organizations
            .get_mut(&org_id)
            .and_then(|o| o.members.iter_mut().find(|m| m.user_id == user_id))
        {
            m.role = role;
        }
        Ok(self.membership_payload(&org_id, &user_id))
    }

    /// What a membership mutation answers: the organization and the user.
    fn membership_payload(&self, org_id: &str, user_id: &str) -> Value {
        let user = self
            .state
            .users
            .get(user_id)
            .map(user_json)
            .unwrap_or(Value::Null);
        json!({
            "organization": self.org_value(org_id),
            "user": user,
        })
    }

    fn delete_membership(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let (org_id, user_id) = self.member_target(input)?;
        let org_type = self.state.organizations.get(&org_id).map(|o| o.org_type);
        if org_type == Some(OrgType::Personal) {
            return Err(FieldError::new(
                "VALIDATION",
                "cannot remove the owner of a personal organization",
            ));
        }
        if let Some(org) = self.state.organizations.get_mut(&org_id) {
            let admins_left = org
                .members
                .iter()
                .filter(|m| m.role == Role::Admin && m.user_id != user_id)
                .count();
            if admins_left == 0 {
                return Err(FieldError::new(
                    "VALIDATION",
                    "an organization needs at least one admin",
                ));
            }
            org.members.retain(|m| m.user_id != user_id);
        }
        Ok(self.membership_payload(&org_id, &user_id))
    }

    fn mint(
        &mut self,
        org_id: &str,
        name: &str,
        profile: &str,
        profile_params: Value,
        scope: TokenScope,
        expiry: Option<&str>,
    ) -> Result<Token, FieldError> {
        let lifetime = match expiry {
            None => chrono::Duration::hours(DEFAULT_TOKEN_HOURS),
            Some(text) => parse_go_duration(text).ok_or_else(|| {
                FieldError::new(
                    "VALIDATION",
                    format!("expiry {text:?} is not a Go duration"),
                )
            })?,
        };
        if lifetime <= chrono::Duration::zero() {
            return Err(FieldError::new("VALIDATION", "expiry must be positive"));
        }
        let token = Token {
            id: ids::node_id(self.rng),
            name: name.to_string(),
            secret: ids::token_secret(self.rng),
            org_id: org_id.to_string(),
            user_id: self.principal.user_id(self.state),
            profile: profile.to_string(),
            profile_params,
            scope,
            created_at: self.now,
            expires_at: self.now + lifetime,
            revoked_at: None,
            revoked_by: None,
        };
        self.state.tokens.push(token.clone());
        Ok(token)
    }

    fn create_token(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let org_id = self.org_id_for(required(input, "organizationId")?)?;
        let name = required(input, "name")?.to_string();
        let profile = required(input, "profile")?.to_string();
        let profile_params = input.get("profileParams").cloned().unwrap_or(Value::Null);
        let scope = match profile.as_str() {
            "deploy_organization" => {
                self.require_admin(&org_id)?;
                TokenScope::Organization
            }
            "deploy" => {
                let app_ref = profile_params
                    .get("app_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        FieldError::new(
                            "VALIDATION",
                            "profile deploy needs profileParams {\"app_id\": …}",
                        )
                    })?;
                let app = app_by_ref(self.state, app_ref)?;
                if app.org_id != org_id {
                    return Err(FieldError::new(
                        "VALIDATION",
                        "app is not in this organization",
                    ));
                }
                // An organization token may attenuate itself to one app.
                let allowed = self.principal.is_org_admin(self.state, &org_id)
                    || matches!(self.principal, Principal::OrgToken { .. });
                if !allowed {
                    return Err(unauthorized("create tokens for this app"));
                }
                TokenScope::App {
                    app_name: app.name.clone(),
                }
            }
            other => {
                return Err(FieldError::new(
                    "VALIDATION",
                    format!(
                        "profile {other:?} is not implemented in the emulator (deploy_organization, deploy)"
                    ),
                ));
            }
        };
        let expiry = str_arg(input, "expiry").map(str::to_string);
        let token = self.mint(
            &org_id,
            &name,
            &profile,
            profile_params,
            scope,
            expiry.as_deref(),
        )?;
        Ok(json!({"limitedAccessToken": token_json(self.state, &token, true)}))
    }

    fn delete_token(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let by_id = str_arg(input, "id");
        let by_secret = str_arg(input, "token").map(|t| t.trim_start_matches("FlyV1 ").trim());
        let index = self
            .state
            .tokens
            .iter()
            .position(|t| Some(t.id.as_str()) == by_id || Some(t.secret.as_str()) == by_secret)
            .ok_or_else(|| FieldError::new("NOT_FOUND", "Could not find LimitedAccessToken"))?;
        let org_id = self.state.tokens[index].org_id.clone();
        self.org_id_for(&org_id)?;
        let own_token = self.principal.token_id() == Some(self.state.tokens[index].id.as_str());
        if !own_token {
            self.require_admin(&org_id)?;
        }
        let revoked_by = str_arg(input, "revokedBy").map(str::to_string);
        let now = self.now;
        let token = &mut self.state.tokens[index];
        token.revoked_at.get_or_insert(now);
        token.revoked_by = revoked_by.clone();
        Ok(json!({
            "token": token.id,
            "revokedBy": revoked_by,
        }))
    }

    fn enable_postgres_consul(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        let app_ref = required(input, "appId")?;
        let app_name = app_by_ref(self.state, app_ref)?.name.clone();
        let allowed = self
            .state
            .apps
            .get(&app_name)
            .is_some_and(|a| self.principal.can_use_app(self.state, a));
        if !allowed {
            return Err(unauthorized("access this app"));
        }
        let region = str_arg(input, "region").unwrap_or("iad").to_string();
        let secret = ids::password(self.rng);
        let suffix = ids::lower_id(self.rng, 8);
        let url = format!("https://:{secret}@consul-{region}.fly-shared.net/{app_name}-{suffix}/");
        if let Some(app) = self.state.apps.get_mut(&app_name) {
            app.consul_url = Some(url.clone());
        }
        Ok(json!({"consulUrl": url}))
    }
}

/// Fly's default for `issueCertificate` without `validHours` (as
/// `fly ssh issue`'s default).
const DEFAULT_CERTIFICATE_HOURS: i64 = 24;

fn string_list(input: &Map<String, Value>, name: &str) -> Vec<String> {
    input
        .get(name)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn ssh_error(what: &str, e: ssh_key::Error) -> FieldError {
    FieldError::new("VALIDATION", format!("{what}: {e}"))
}

impl Resolver<'_> {
    /// A user certificate for `publicKey` (an OpenSSH Ed25519 key) signed
    /// by the organization's SSH authority; without a key, a new key pair
    /// whose private half is answered as the deprecated `key`.
    fn issue_certificate(&mut self, input: &Map<String, Value>) -> Result<Value, FieldError> {
        use ssh_key::certificate::{Builder, CertType};
        use ssh_key::rand_core::OsRng;
        use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

        let org_id = self.org_id_for(required(input, "organizationId")?)?;
        let app_names = string_list(input, "appNames");
        for app in &app_names {
            if app_by_ref(self.state, app)?.org_id != org_id {
                return Err(FieldError::new(
                    "VALIDATION",
                    format!("app {app:?} is not in this organization"),
                ));
            }
        }
        let mut principals = string_list(input, "principals");
        if principals.is_empty() {
            principals = vec!["root".into(), "fly".into()];
        }
        let hours = input
            .get("validHours")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_CERTIFICATE_HOURS);
        if hours <= 0 {
            return Err(FieldError::new("VALIDATION", "validHours must be positive"));
        }
        let (public, generated) = match str_arg(input, "publicKey") {
            Some(openssh) => {
                let key = PublicKey::from_openssh(openssh.trim())
                    .map_err(|e| ssh_error("publicKey is not an OpenSSH public key", e))?;
                if key.algorithm() != Algorithm::Ed25519 {
                    return Err(FieldError::new(
                        "VALIDATION",
                        "publicKey must be an ED25519 key",
                    ));
                }
                (key, None)
            }
            None => {
                let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                    .map_err(|e| ssh_error("generating a key", e))?;
                (key.public_key().clone(), Some(key))
            }
        };
        let authority = match self.state.ssh_authorities.get(&org_id) {
            Some(ca) => ca.clone(),
            None => {
                let ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                    .map_err(|e| ssh_error("generating the organization's authority", e))?;
                self.state
                    .ssh_authorities
                    .insert(org_id.clone(), ca.clone());
                ca
            }
        };
        let valid_before = self.now + chrono::Duration::hours(hours);
        let serial = self.state.ssh_certificates.len() as u64 + 1;
        let unix = |t: DateTime<Utc>| u64::try_from(t.timestamp()).unwrap_or_default();
        let certificate = (|| {
            let mut builder = Builder::new_with_random_nonce(
                &mut OsRng,
                public.key_data().clone(),
                unix(self.now),
                unix(valid_before),
            )?;
            builder.serial(serial)?;
            builder.key_id(format!("{org_id}:{serial}"))?;
            builder.cert_type(CertType::User)?;
            for p in &principals {
                builder.valid_principal(p.clone())?;
            }
            builder.sign(&authority)?.to_openssh()
        })()
        .map_err(|e| ssh_error("signing the certificate", e))?;
        self.state.ssh_certificates.push(SshCertificate {
            serial,
            org_id,
            principals,
            app_names,
            key_fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
            digest: crate::rest::digest(&certificate),
            valid_before,
            created_at: self.now,
        });
        let key = match generated {
            Some(k) => Value::String(
                k.to_openssh(LineEnding::LF)
                    .map_err(|e| ssh_error("encoding the key", e))?
                    .to_string(),
            ),
            None => Value::Null,
        };
        Ok(json!({"certificate": certificate, "key": key}))
    }
}

/// Turns an invitation into a membership (the control API's stand-in for
/// the invitee clicking the link): creates the user if needed, role MEMBER.
pub fn accept_invitation(
    state: &mut State,
    rng: &mut StdRng,
    invitation_id: &str,
    now: DateTime<Utc>,
) -> Result<User, String> {
    let (org_id, email) = state
        .organizations
        .values()
        .find_map(|o| {
            o.invitations
                .iter()
                .find(|i| i.id == invitation_id)
                .map(|i| (o.id.clone(), i.email.clone()))
        })
        .ok_or_else(|| format!("no invitation {invitation_id:?}"))?;
    let user = match state.user_by_email(&email) {
        Some(user) => user.clone(),
        None => {
            let user = User {
                id: ids::node_id(rng),
                name: email.split('@').next().unwrap_or_default().to_string(),
                email: email.clone(),
                created_at: now,
            };
            state.users.insert(user.id.clone(), user.clone());
            user
        }
    };
    let org = state
        .organizations
        .get_mut(&org_id)
        .ok_or_else(|| format!("no organization {org_id:?}"))?;
    let invitation = org
        .invitations
        .iter_mut()
        .find(|i| i.id == invitation_id)
        .ok_or_else(|| format!("no invitation {invitation_id:?}"))?;
    if invitation.redeemed_at.is_some() {
        return Err("invitation already accepted".into());
    }
    invitation.redeemed_at = Some(now);
    if org.membership(&user.id).is_none() {
        org.members.push(Membership {
            user_id: user.id.clone(),
            role: Role::Member,
            joined_at: now,
        });
    }
    Ok(user)
}
