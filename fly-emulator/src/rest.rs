//! Machines REST operations against the state. The dispatcher in `lib.rs`
//! has already routed by the OpenAPI document, authenticated, rate-limited
//! and validated the body; each handler answers with a status and a JSON
//! body shaped as the spec's response schema.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use http::StatusCode;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use crate::auth::{Principal, parse_go_duration};
use crate::ids;
use crate::state::{
    App, IpAssignment, Machine, Organization, Secret, State, Token, TokenScope, Volume,
};

pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Value>,
    pub retry_after_secs: Option<u64>,
}

impl Reply {
    pub fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            retry_after_secs: None,
        }
    }

    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            body: None,
            retry_after_secs: None,
        }
    }
}

/// Which error shape an API family answers with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// Machines API: `{"error": …, "status": …}` (status only when known).
    Machines,
    /// Managed Postgres: `{"error": …}`.
    Postgres,
}

/// The error replies the handlers give most, in this shape.
impl ErrorShape {
    pub fn bad_request(self, message: impl Into<String>) -> Reply {
        error(self, StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(self, message: impl Into<String>) -> Reply {
        error(self, StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(self, message: impl Into<String>) -> Reply {
        error(self, StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(self, message: impl Into<String>) -> Reply {
        error(self, StatusCode::NOT_FOUND, message)
    }

    pub fn unprocessable(self, message: impl Into<String>) -> Reply {
        error(self, StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

pub fn error(shape: ErrorShape, status: StatusCode, message: impl Into<String>) -> Reply {
    error_with_code(shape, status, message, None)
}

pub fn error_with_code(
    shape: ErrorShape,
    status: StatusCode,
    message: impl Into<String>,
    status_code: Option<&str>,
) -> Reply {
    let mut body = json!({"error": message.into()});
    if let (ErrorShape::Machines, Some(code), Some(obj)) =
        (shape, status_code, body.as_object_mut())
    {
        obj.insert("status".into(), json!(code));
    }
    Reply::json(status, body)
}

pub struct Request<'a> {
    pub operation_id: &'a str,
    pub params: HashMap<String, String>,
    pub query: Map<String, Value>,
    pub body: Value,
    pub principal: Principal,
}

impl Request<'_> {
    fn param(&self, name: &str) -> &str {
        self.params
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn query_str(&self, name: &str) -> Option<&str> {
        self.query.get(name).and_then(Value::as_str)
    }

    fn query_flag(&self, name: &str) -> bool {
        matches!(self.query_str(name), Some("true" | "1"))
    }

    fn body_str(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }

    fn body_bool(&self, name: &str, default: bool) -> bool {
        self.body
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    fn body_i64(&self, name: &str, default: i64) -> i64 {
        self.body
            .get(name)
            .and_then(Value::as_i64)
            .unwrap_or(default)
    }
}

pub struct Ctx<'a> {
    pub state: &'a mut State,
    pub rng: &'a mut StdRng,
    pub now: DateTime<Utc>,
    pub postgres_ready_after: chrono::Duration,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// FNV-1a: a stable digest of a secret value (Fly shows a digest, never
/// the value, in listings; it only has to change when the value does).
pub(crate) fn digest(value: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

const M: ErrorShape = ErrorShape::Machines;
const P: ErrorShape = ErrorShape::Postgres;

pub fn handle(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    match req.operation_id {
        "Apps_list" => apps_list(ctx, req),
        "Apps_create" => apps_create(ctx, req),
        "Apps_show" => with_app(ctx, req, |ctx, app| {
            Reply::json(StatusCode::OK, app_json(ctx.state, app))
        }),
        "Apps_delete" => apps_delete(ctx, req),
        "App_create_deploy_token" => deploy_token(ctx, req),
        "App_IPAssignments_list" => with_app(ctx, req, |_, app| {
            Reply::json(
                StatusCode::OK,
                json!({"ips": app.ips.iter().map(ip_json).collect::<Vec<_>>()}),
            )
        }),
        "App_IPAssignments_create" => ip_create(ctx, req),
        "App_IPAssignments_delete" => ip_delete(ctx, req),
        "Secrets_list" => with_app(ctx, req, |_, app| {
            let show = req.query_flag("show_secrets");
            let secrets: Vec<Value> = app
                .secrets
                .iter()
                .map(|(n, s)| secret_json(n, s, show))
                .collect();
            Reply::json(StatusCode::OK, json!({"secrets": secrets}))
        }),
        "Secrets_update" => secrets_update(ctx, req),
        "Secret_get" => with_app(ctx, req, |_, app| {
            let name = req.param("secret_name");
            match app.secrets.get(name) {
                Some(secret) => Reply::json(
                    StatusCode::OK,
                    secret_json(name, secret, req.query_flag("show_secrets")),
                ),
                None => M.not_found(format!("secret {name:?} not found")),
            }
        }),
        "Secret_create" => secret_create(ctx, req),
        "Secret_delete" => secret_delete(ctx, req),
        "Volumes_list" => with_app(ctx, req, |_, app| {
            Reply::json(
                StatusCode::OK,
                Value::Array(app.volumes.values().map(volume_json).collect()),
            )
        }),
        "Volumes_create" => volume_create(ctx, req),
        "Volumes_get_by_id" => with_app(ctx, req, |_, app| {
            let volume = app.volumes.get(req.param("volume_id"));
            found_or_404(volume, volume_json, "volume")
        }),
        "Volume_delete" => volume_delete(ctx, req),
        "Machines_list" => with_app(ctx, req, |_, app| {
            let state_filter = req.query_str("state");
            let region_filter = req.query_str("region");
            let machines: Vec<Value> = app
                .machines
                .values()
                .filter(|m| state_filter.is_none_or(|s| s.split(',').any(|s| s == m.state)))
                .filter(|m| region_filter.is_none_or(|r| r == m.region))
                .map(machine_json)
                .collect();
            Reply::json(StatusCode::OK, Value::Array(machines))
        }),
        "Machines_create" => machine_create(ctx, req),
        "Machines_show" => with_app(ctx, req, |_, app| {
            let machine = app.machines.get(req.param("machine_id"));
            found_or_404(machine, machine_json, "machine")
        }),
        "Machines_update" => machine_update(ctx, req),
        "Machines_delete" => machine_delete(ctx, req),
        "Machines_restart" => machine_transition(ctx, req, "started"),
        "Machines_start" => machine_transition(ctx, req, "started"),
        "Machines_stop" => machine_transition(ctx, req, "stopped"),
        "Machines_wait" => with_app(ctx, req, |_, app| {
            match app.machines.get(req.param("machine_id")) {
                Some(m) => {
                    let wanted = req.query_str("state").unwrap_or("started");
                    if m.state == wanted {
                        Reply::json(
                            StatusCode::OK,
                            json!({"ok": true, "state": m.state, "version": m.version}),
                        )
                    } else {
                        // The emulator's machines change state only on request,
                        // so waiting longer could not change the answer.
                        error(
                            M,
                            StatusCode::REQUEST_TIMEOUT,
                            format!("deadline_exceeded: machine is {}, not {wanted}", m.state),
                        )
                    }
                }
                None => M.not_found("machine not found"),
            }
        }),
        "CurrentToken_show" => current_token(ctx, req),
        "Postgres_list" => crate::postgres::list(ctx, req),
        "Postgres_create" => crate::postgres::create(ctx, req),
        "Postgres_show" => crate::postgres::show(ctx, req),
        "Postgres_delete" => crate::postgres::delete(ctx, req),
        "Postgres_databases_list"
        | "Postgres_databases_create"
        | "Postgres_databases_delete"
        | "Postgres_users_list"
        | "Postgres_users_create"
        | "Postgres_users_delete"
        | "Postgres_users_update_role"
        | "Postgres_users_credentials"
        | "Postgres_users_rotate_password" => crate::postgres::sub_resource(ctx, req),
        other => {
            let shape = if other.starts_with("Postgres") { P } else { M };
            error(
                shape,
                StatusCode::NOT_IMPLEMENTED,
                format!("not implemented in the emulator: {other}"),
            )
        }
    }
}

/// 200 with the item as JSON, or the Machines API's 404 for a missing
/// `what` ("volume", "machine").
fn found_or_404<T>(item: Option<&T>, to_json: impl FnOnce(&T) -> Value, what: &str) -> Reply {
    match item {
        Some(item) => Reply::json(StatusCode::OK, to_json(item)),
        None => M.not_found(format!("{what} not found")),
    }
}

/// The organization that owns the named app.
fn app_org<'s>(state: &'s State, app_name: &str) -> Option<&'s Organization> {
    state
        .apps
        .get(app_name)
        .and_then(|a| state.organizations.get(&a.org_id))
}

/// Looks the app up and checks the principal may use it.
fn app_access<'s>(state: &'s State, principal: &Principal, name: &str) -> Result<&'s App, Reply> {
    let app = state
        .apps
        .get(name)
        .ok_or_else(|| M.not_found(format!("app {name:?} not found")))?;
    if !principal.can_use_app(state, app) {
        return Err(M.forbidden(format!("token has no access to app {name:?}")));
    }
    Ok(app)
}

fn with_app(
    ctx: &mut Ctx<'_>,
    req: &Request<'_>,
    answer: impl FnOnce(&Ctx<'_>, &App) -> Reply,
) -> Reply {
    match app_access(ctx.state, &req.principal, req.param("app_name")) {
        Ok(app) => {
            let app = app.clone();
            answer(ctx, &app)
        }
        Err(reply) => reply,
    }
}

fn with_app_mut(
    ctx: &mut Ctx<'_>,
    req: &Request<'_>,
    change: impl FnOnce(&mut App, &mut StdRng, DateTime<Utc>) -> Reply,
) -> Reply {
    let name = req.param("app_name");
    if let Err(reply) = app_access(ctx.state, &req.principal, name) {
        return reply;
    }
    match ctx.state.apps.get_mut(name) {
        Some(app) => change(app, ctx.rng, ctx.now),
        None => M.not_found(format!("app {name:?} not found")),
    }
}

fn app_json(state: &State, app: &App) -> Value {
    let org = state.organizations.get(&app.org_id);
    let status = if app.machines.is_empty() {
        "pending"
    } else {
        "deployed"
    };
    json!({
        "id": app.id,
        "name": app.name,
        "internal_numeric_id": app.internal_numeric_id,
        "network": app.network,
        "organization": {
            "name": org.map(|o| o.name.clone()).unwrap_or_default(),
            "slug": org.map(|o| o.slug.clone()).unwrap_or_default(),
            "internal_numeric_id": org.map(|o| o.internal_numeric_id).unwrap_or_default(),
        },
        "status": status,
        "machine_count": app.machines.len(),
        "volume_count": app.volumes.len(),
    })
}

fn resolve_org_slug<'s>(
    state: &'s State,
    principal: &Principal,
    slug: &str,
) -> Option<&'s Organization> {
    state.org_by_slug(slug).or_else(|| {
        if slug == "personal" {
            state.personal_org_of(&principal.user_id(state))
        } else {
            None
        }
    })
}

/// The organization behind `slug`, if the principal may use it.
fn usable_org<'s>(
    state: &'s State,
    principal: &Principal,
    slug: &str,
) -> Result<&'s crate::state::Organization, Reply> {
    let Some(org) = resolve_org_slug(state, principal, slug) else {
        return Err(M.not_found(format!("organization {slug:?} not found")));
    };
    if !principal.can_use_org(state, &org.id) {
        return Err(M.forbidden(format!("token has no access to organization {slug:?}")));
    }
    Ok(org)
}

fn apps_list(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let Some(slug) = req.query_str("org_slug") else {
        return M.bad_request("org_slug is required");
    };
    let org = match usable_org(ctx.state, &req.principal, slug) {
        Ok(org) => org,
        Err(reply) => return reply,
    };
    let role = req.query_str("app_role");
    let apps: Vec<Value> = ctx
        .state
        .apps
        .values()
        .filter(|a| a.org_id == org.id)
        .filter(|a| role.is_none_or(|r| a.app_role_id.as_deref() == Some(r)))
        .map(|a| app_json(ctx.state, a))
        .collect();
    Reply::json(
        StatusCode::OK,
        json!({"total_apps": apps.len(), "apps": apps}),
    )
}

/// Fly app names: lower-case letters, digits and dashes, starting with a
/// letter or digit, at most 63 characters (they become DNS labels).
fn valid_app_name(name: &str) -> bool {
    valid_name(name, 63, '-') && !name.starts_with('-') && !name.ends_with('-')
}

/// Non-empty, at most `max_len` bytes, and only lower-case ASCII letters,
/// digits and `separator`.
fn valid_name(name: &str, max_len: usize, separator: char) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == separator)
}

fn apps_create(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    // The spec names the field `name`; flyctl has long sent `app_name`,
    // which the API still takes.
    let name = req.body_str("name").or_else(|| req.body_str("app_name"));
    let Some(slug) = req.body_str("org_slug") else {
        return M.bad_request("org_slug is required");
    };
    let org_id = match usable_org(ctx.state, &req.principal, slug) {
        Ok(org) => org.id.clone(),
        Err(reply) => return reply,
    };
    if let Some(key) = req.body_str("idempotency_key") {
        let earlier = ctx
            .state
            .apps
            .values()
            .find(|a| a.org_id == org_id && a.idempotency_key.as_deref() == Some(key));
        if let Some(app) = earlier {
            if name.is_some_and(|n| n != app.name) {
                return error(
                    M,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key was used with a different app name",
                );
            }
            return Reply::json(
                StatusCode::CREATED,
                json!({"id": app.id, "created_at": app.created_at.timestamp_millis()}),
            );
        }
    }
    let Some(name) = name else {
        return M.bad_request("name is required");
    };
    if !valid_app_name(name) {
        return M.bad_request(format!(
            "invalid app name {name:?}: use lower-case letters, digits and dashes"
        ));
    }
    if ctx.state.apps.contains_key(name) {
        // App names are global across all organizations.
        return error_with_code(
            M,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("app name {name:?} is already taken"),
            Some("name_taken"),
        );
    }
    let app = App {
        id: ids::lower_id(ctx.rng, 14),
        internal_numeric_id: ctx.state.next_numeric_id(),
        name: name.to_string(),
        org_id,
        network: req.body_str("network").unwrap_or_default().to_string(),
        app_role_id: req.body_str("app_role_id").map(str::to_string),
        idempotency_key: req.body_str("idempotency_key").map(str::to_string),
        created_at: ctx.now,
        secrets: Default::default(),
        secrets_version: 0,
        ips: Vec::new(),
        volumes: Default::default(),
        machines: Default::default(),
        consul_url: None,
    };
    let reply = json!({"id": app.id, "created_at": app.created_at.timestamp_millis()});
    ctx.state.apps.insert(app.name.clone(), app);
    Reply::json(StatusCode::CREATED, reply)
}

fn apps_delete(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let name = req.param("app_name");
    if let Err(reply) = app_access(ctx.state, &req.principal, name) {
        return reply;
    }
    ctx.state.apps.remove(name);
    let now = ctx.now;
    // Deploy tokens die with their app.
    for token in ctx.state.tokens.iter_mut() {
        if token.scope
            == (TokenScope::App {
                app_name: name.to_string(),
            })
        {
            token.revoked_at.get_or_insert(now);
        }
    }
    Reply::empty(StatusCode::ACCEPTED)
}

fn deploy_token(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let name = req.param("app_name");
    let app = match app_access(ctx.state, &req.principal, name) {
        Ok(app) => app,
        Err(reply) => return reply,
    };
    let org_id = app.org_id.clone();
    let app_id = app.id.clone();
    let lifetime = match req.body_str("expiry") {
        None | Some("") => chrono::Duration::hours(175_200),
        Some(text) => match parse_go_duration(text) {
            Some(d) if d > chrono::Duration::zero() => d,
            _ => {
                return M.bad_request(format!("expiry {text:?} is not a positive Go duration"));
            }
        },
    };
    let token = Token {
        id: ids::node_id(ctx.rng),
        name: format!("deploy token for {name}"),
        secret: ids::token_secret(ctx.rng),
        org_id,
        user_id: req.principal.user_id(ctx.state),
        profile: "deploy".into(),
        profile_params: json!({"app_id": app_id}),
        scope: TokenScope::App {
            app_name: name.to_string(),
        },
        created_at: ctx.now,
        expires_at: ctx.now + lifetime,
        revoked_at: None,
        revoked_by: None,
    };
    let header = format!("FlyV1 {}", token.secret);
    ctx.state.tokens.push(token);
    Reply::json(StatusCode::OK, json!({"token": header}))
}

fn ip_json(ip: &IpAssignment) -> Value {
    let mut value = json!({
        "ip": ip.ip,
        "region": ip.region,
        "service_name": ip.service_name,
        "shared": ip.shared,
        "egress": ip.ip_type.starts_with("egress"),
        "created_at": ts(ip.created_at),
    });
    // Only Flycast (private_v6) addresses belong to a 6PN network.
    if let (Some(network), Some(obj)) = (&ip.network, value.as_object_mut()) {
        obj.insert(
            "network".into(),
            json!({"name": network, "org_slug": ip.org_slug}),
        );
    }
    value
}

fn ip_create(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let Some(ip_type) = req.body_str("type").map(str::to_string) else {
        return M.bad_request("type is required");
    };
    let org_numeric =
        app_org(ctx.state, req.param("app_name")).map(|o| (o.internal_numeric_id, o.slug.clone()));
    let Some((org_numeric_id, app_org_slug)) = org_numeric else {
        return M.not_found(format!("app {:?} not found", req.param("app_name")));
    };
    let org_slug = req
        .body_str("org_slug")
        .unwrap_or(&app_org_slug)
        .to_string();
    let region = req.body_str("region").unwrap_or("global").to_string();
    let service_name = req.body_str("service_name").unwrap_or_default().to_string();
    let requested_network = req.body_str("network").map(str::to_string);
    with_app_mut(ctx, req, move |app, rng, now| {
        let (ip, shared) = match ip_type.as_str() {
            "private_v6" => (ids::private_v6(rng, org_numeric_id), false),
            "v6" | "egress_v6" => (ids::public_v6(rng), false),
            "v4" | "egress_v4" => (ids::public_v4(rng), false),
            "shared_v4" => (ids::shared_v4(rng), true),
            "egress_pair" => {
                let v4 = ids::public_v4(rng);
                let v6 = ids::public_v6(rng);
                let assignment = IpAssignment {
                    ip: format!("{v4},{v6}"),
                    ip_type: ip_type.clone(),
                    region: region.clone(),
                    service_name: service_name.clone(),
                    network: None,
                    org_slug: org_slug.clone(),
                    shared: false,
                    created_at: now,
                };
                app.ips.push(assignment);
                return Reply::json(
                    StatusCode::OK,
                    json!({
                        "ip_pair": {"v4": v4, "v6": v6},
                        "region": region, "egress": true, "shared": false,
                        "service_name": service_name, "created_at": ts(now),
                    }),
                );
            }
            other => {
                return M.bad_request(format!("unknown IP type {other:?}"));
            }
        };
        if shared && app.ips.iter().any(|i| i.ip_type == "shared_v4") {
            return error(
                M,
                StatusCode::UNPROCESSABLE_ENTITY,
                "app already has a shared IPv4 address",
            );
        }
        let network = (ip_type == "private_v6").then(|| {
            requested_network
                .clone()
                .unwrap_or_else(|| app.network.clone())
        });
        let assignment = IpAssignment {
            ip,
            ip_type,
            region,
            service_name,
            network,
            org_slug,
            shared,
            created_at: now,
        };
        let reply = ip_json(&assignment);
        app.ips.push(assignment);
        Reply::json(StatusCode::OK, reply)
    })
}

fn ip_delete(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let ip = req.param("ip").to_string();
    with_app_mut(ctx, req, |app, _, _| {
        let before = app.ips.len();
        app.ips
            .retain(|i| i.ip != ip && !i.ip.split(',').any(|part| part == ip));
        if app.ips.len() == before {
            M.not_found(format!("IP {ip:?} not assigned to this app"))
        } else {
            Reply::empty(StatusCode::NO_CONTENT)
        }
    })
}

fn secret_json(name: &str, secret: &Secret, show_value: bool) -> Value {
    let mut value = json!({
        "name": name,
        "digest": secret.digest,
        "created_at": ts(secret.created_at),
        "updated_at": ts(secret.updated_at),
    });
    if let (true, Some(obj)) = (show_value, value.as_object_mut()) {
        obj.insert("value".into(), json!(secret.value));
    }
    value
}

fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

fn set_secret(app: &mut App, name: &str, value: &str, now: DateTime<Utc>) {
    let created_at = app.secrets.get(name).map(|s| s.created_at).unwrap_or(now);
    app.secrets.insert(
        name.to_string(),
        Secret {
            value: value.to_string(),
            digest: digest(value),
            created_at,
            updated_at: now,
        },
    );
}

fn secrets_update(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let values = req
        .body
        .get("values")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(bad) = values.keys().find(|k| !valid_secret_name(k)) {
        return M.bad_request(format!("invalid secret name {bad:?}"));
    }
    with_app_mut(ctx, req, |app, _, now| {
        for (name, value) in &values {
            set_secret(app, name, value.as_str().unwrap_or_default(), now);
        }
        app.secrets_version += 1;
        let secrets: Vec<Value> = app
            .secrets
            .iter()
            .map(|(n, s)| secret_json(n, s, false))
            .collect();
        Reply::json(
            StatusCode::OK,
            json!({"secrets": secrets, "version": app.secrets_version, "Version": app.secrets_version}),
        )
    })
}

fn secret_create(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let name = req.param("secret_name").to_string();
    if !valid_secret_name(&name) {
        return M.bad_request(format!("invalid secret name {name:?}"));
    }
    let Some(value) = req.body_str("value").map(str::to_string) else {
        return M.bad_request("value is required");
    };
    with_app_mut(ctx, req, |app, _, now| {
        set_secret(app, &name, &value, now);
        app.secrets_version += 1;
        let mut reply = app
            .secrets
            .get(&name)
            .map(|s| secret_json(&name, s, false))
            .unwrap_or(json!({}));
        if let Some(obj) = reply.as_object_mut() {
            obj.insert("version".into(), json!(app.secrets_version));
            obj.insert("Version".into(), json!(app.secrets_version));
        }
        Reply::json(StatusCode::CREATED, reply)
    })
}

fn secret_delete(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let name = req.param("secret_name").to_string();
    with_app_mut(ctx, req, |app, _, _| {
        if app.secrets.remove(&name).is_none() {
            return M.not_found(format!("secret {name:?} not found"));
        }
        app.secrets_version += 1;
        Reply::json(
            StatusCode::OK,
            json!({"version": app.secrets_version, "Version": app.secrets_version}),
        )
    })
}

fn volume_json(v: &Volume) -> Value {
    let blocks = v.size_gb * 262_144;
    let mut value = json!({
        "id": v.id,
        "name": v.name,
        "state": v.state,
        "region": v.region,
        "zone": v.zone,
        "size_gb": v.size_gb,
        "encrypted": v.encrypted,
        "fstype": v.fstype,
        "created_at": ts(v.created_at),
        "auto_backup_enabled": v.auto_backup_enabled,
        "snapshot_retention": v.snapshot_retention,
        "block_size": 4096,
        "blocks": blocks,
        "blocks_avail": blocks,
        "blocks_free": blocks,
        "bytes_total": v.size_gb * 1_073_741_824,
        "bytes_used": 0,
        "host_status": "ok",
        "type": "local",
    });
    if let (Some(machine), Some(obj)) = (&v.attached_machine_id, value.as_object_mut()) {
        obj.insert("attached_machine_id".into(), json!(machine));
    }
    value
}

/// Fly volume names: lower-case letters, digits and underscores, at most
/// 30 characters.
fn valid_volume_name(name: &str) -> bool {
    valid_name(name, 30, '_')
}

fn volume_create(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let Some(name) = req.body_str("name").map(str::to_string) else {
        return M.bad_request("name is required");
    };
    if !valid_volume_name(&name) {
        return M.bad_request(format!(
            "invalid volume name {name:?}: lower-case letters, digits and underscores, at most 30"
        ));
    }
    let Some(region) = req.body_str("region").map(str::to_string) else {
        return M.bad_request("region is required");
    };
    let size_gb = req.body_i64("size_gb", 1);
    if !(1..=500).contains(&size_gb) {
        return M.bad_request("size_gb must be between 1 and 500");
    }
    with_app_mut(ctx, req, move |app, rng, now| {
        let zone = format!(
            "{:04x}",
            u16::from_str_radix(&ids::machine_id(rng)[..4], 16).unwrap_or(0)
        );
        let volume = Volume {
            id: ids::volume_id(rng),
            name,
            region,
            zone,
            size_gb,
            encrypted: req.body_bool("encrypted", true),
            require_unique_zone: req.body_bool("require_unique_zone", true),
            fstype: req.body_str("fstype").unwrap_or("ext4").to_string(),
            auto_backup_enabled: req.body_bool("auto_backup_enabled", true),
            snapshot_retention: req.body_i64("snapshot_retention", 5),
            state: "created".into(),
            attached_machine_id: None,
            created_at: now,
        };
        let reply = volume_json(&volume);
        app.volumes.insert(volume.id.clone(), volume);
        Reply::json(StatusCode::OK, reply)
    })
}

fn volume_delete(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let id = req.param("volume_id").to_string();
    with_app_mut(ctx, req, |app, _, _| {
        match app
            .volumes
            .get(&id)
            .and_then(|v| v.attached_machine_id.clone())
        {
            Some(machine) if app.machines.contains_key(&machine) => {
                return error(
                    M,
                    StatusCode::PRECONDITION_FAILED,
                    format!("failed_precondition: volume is attached to machine {machine}"),
                );
            }
            _ => {}
        }
        match app.volumes.remove(&id) {
            Some(mut v) => {
                v.state = "destroyed".into();
                Reply::json(StatusCode::OK, volume_json(&v))
            }
            None => M.not_found("volume not found"),
        }
    })
}

fn image_ref(image: &str) -> Value {
    let (registry, rest) = match image.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') => (host, rest),
        _ => ("docker-hub-mirror.fly.io", image),
    };
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (rest, "latest"),
    };
    json!({"registry": registry, "repository": repository, "tag": tag, "digest": "", "labels": {}})
}

fn machine_json(m: &Machine) -> Value {
    let image = m
        .config
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    json!({
        "id": m.id,
        "name": m.name,
        "state": m.state,
        "region": m.region,
        "config": m.config,
        "private_ip": m.private_ip,
        "instance_id": m.version,
        "version": m.version,
        "image_ref": image_ref(image),
        "created_at": ts(m.created_at),
        "updated_at": ts(m.updated_at),
        "host_status": "ok",
        "events": [],
        "checks": [],
    })
}

fn machine_create(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let config = req.body.get("config").cloned().unwrap_or(json!({}));
    if config
        .get("image")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return M.bad_request("config.image is required");
    }
    let org_numeric_id = app_org(ctx.state, req.param("app_name"))
        .map(|o| o.internal_numeric_id)
        .unwrap_or_default();
    let region = req.body_str("region").unwrap_or("iad").to_string();
    let requested_name = req.body_str("name").map(str::to_string);
    let skip_launch = req.body_bool("skip_launch", false);
    with_app_mut(ctx, req, move |app, rng, now| {
        let id = ids::machine_id(rng);
        let mounts: Vec<String> = config
            .get("mounts")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|m| m.get("volume").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        for volume_id in &mounts {
            match app.volumes.get(volume_id) {
                None => {
                    return M.bad_request(format!("volume {volume_id:?} not found in this app"));
                }
                Some(v)
                    if v.attached_machine_id
                        .as_ref()
                        .is_some_and(|m| app.machines.contains_key(m)) =>
                {
                    return M.bad_request(format!(
                        "volume {volume_id:?} is already attached to a machine"
                    ));
                }
                Some(v) if v.region != region => {
                    return M.bad_request(format!(
                        "volume {volume_id:?} is in region {}, not {region}",
                        v.region
                    ));
                }
                Some(_) => {}
            }
        }
        let name = requested_name.unwrap_or_else(|| format!("machine-{}", &id[..6]));
        if app.machines.values().any(|m| m.name == name) {
            return error(
                M,
                StatusCode::CONFLICT,
                format!("a machine named {name:?} already exists"),
            );
        }
        for volume_id in &mounts {
            if let Some(v) = app.volumes.get_mut(volume_id) {
                v.attached_machine_id = Some(id.clone());
            }
        }
        let machine = Machine {
            id: id.clone(),
            name,
            region,
            state: if skip_launch {
                "created".into()
            } else {
                "started".into()
            },
            config,
            private_ip: ids::private_v6(rng, org_numeric_id),
            version: ids::lower_id(rng, 26),
            created_at: now,
            updated_at: now,
        };
        let reply = machine_json(&machine);
        app.machines.insert(id, machine);
        Reply::json(StatusCode::OK, reply)
    })
}

fn machine_delete(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let id = req.param("machine_id").to_string();
    let force = req.query_flag("force");
    with_app_mut(ctx, req, |app, _, _| {
        let Some(machine) = app.machines.get(&id) else {
            return M.not_found("machine not found");
        };
        if machine.state == "started" && !force {
            return error(
                M,
                StatusCode::PRECONDITION_FAILED,
                "failed_precondition: unable to destroy machine, not currently stopped, suspended or created; pass force=true",
            );
        }
        app.machines.remove(&id);
        for volume in app.volumes.values_mut() {
            if volume.attached_machine_id.as_deref() == Some(id.as_str()) {
                volume.attached_machine_id = None;
            }
        }
        Reply::json(StatusCode::OK, json!({"ok": true}))
    })
}

fn machine_transition(ctx: &mut Ctx<'_>, req: &Request<'_>, target: &str) -> Reply {
    let id = req.param("machine_id").to_string();
    with_app_mut(ctx, req, |app, rng, now| {
        let Some(machine) = app.machines.get_mut(&id) else {
            return M.not_found("machine not found");
        };
        let previous = machine.state.clone();
        machine.state = target.to_string();
        machine.updated_at = now;
        machine.version = ids::lower_id(rng, 26);
        Reply::json(
            StatusCode::OK,
            json!({"ok": true, "previous_state": previous}),
        )
    })
}

fn current_token(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let state = &*ctx.state;
    let info = match &req.principal {
        Principal::User { user_id } => json!({
            "user": state.users.get(user_id).map(|u| u.email.clone()).unwrap_or_default(),
        }),
        Principal::OrgToken { token_id, org_id } => json!({
            "token_id": token_id,
            "org_slug": state.organizations.get(org_id).map(|o| o.slug.clone()).unwrap_or_default(),
            "organization": org_id,
        }),
        Principal::AppToken {
            token_id,
            org_id,
            app_name,
        } => json!({
            "token_id": token_id,
            "org_slug": state.organizations.get(org_id).map(|o| o.slug.clone()).unwrap_or_default(),
            "organization": org_id,
            "apps": [app_name],
        }),
    };
    Reply::json(StatusCode::OK, json!({"tokens": [info]}))
}

fn machine_update(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let id = req.param("machine_id").to_string();
    let Some(config) = req.body.get("config").cloned() else {
        return M.bad_request("config is required");
    };
    if config
        .get("image")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return M.bad_request("config.image is required");
    }
    let current_version = req.body_str("current_version").map(str::to_string);
    let region = req.body_str("region").map(str::to_string);
    with_app_mut(ctx, req, |app, rng, now| {
        let Some(machine) = app.machines.get_mut(&id) else {
            return M.not_found("machine not found");
        };
        if current_version.is_some_and(|v| v != machine.version) {
            return error(
                M,
                StatusCode::CONFLICT,
                "machine version changed: current_version does not match",
            );
        }
        if region.is_some_and(|r| r != machine.region) {
            return M.bad_request("a machine cannot move to another region");
        }
        machine.config = config;
        machine.version = ids::lower_id(rng, 26);
        machine.updated_at = now;
        Reply::json(StatusCode::OK, machine_json(machine))
    })
}
