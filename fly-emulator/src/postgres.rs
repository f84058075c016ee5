//! Managed Postgres (`/v1/postgres`): clusters are created asynchronously
//! (`creating` until `--postgres-ready-after` has passed, then `ready`);
//! databases and users are sub-resources that answer 503 with
//! `Retry-After` until the cluster is ready.

use chrono::SecondsFormat;
use http::StatusCode;
use serde_json::{Value, json};

use crate::ids;
use crate::rest::{Ctx, ErrorShape, Reply, Request, error};
use crate::state::{PostgresCluster, PostgresUser, State};

const P: ErrorShape = ErrorShape::Postgres;

/// Plans' sizing (cpus, memory in MB).
fn plan_size(plan: &str) -> (i64, i64, &'static str) {
    match plan.to_ascii_lowercase().as_str() {
        "basic" => (1, 1024, "shared"),
        "starter" => (2, 2048, "shared"),
        "launch" => (4, 8192, "performance"),
        "scale" => (8, 32768, "performance"),
        _ => (16, 65536, "performance"),
    }
}

fn cluster_json(state: &State, c: &PostgresCluster, now: chrono::DateTime<chrono::Utc>) -> Value {
    let org = state.organizations.get(&c.org_id);
    let (cpus, memory_mb, cpu_kind) = plan_size(&c.plan);
    let status = c.status(now);
    let mut value = json!({
        "id": c.id,
        "name": c.name,
        "organization": {
            "name": org.map(|o| o.name.clone()).unwrap_or_default(),
            "slug": org.map(|o| o.slug.clone()).unwrap_or_default(),
        },
        "plan": c.plan,
        "region": c.region,
        "pg_major_version": c.pg_major_version,
        "disk_size_gb": c.disk_size_gb,
        "postgis_enabled": c.postgis_enabled,
        "status": status,
        "created_at": c.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "replicas": 1,
        "cpus": cpus,
        "memory_mb": memory_mb,
        "cpu_kind": cpu_kind,
        "attached_apps": [],
        "storage_provisioned_bytes": null,
        "storage_used_bytes": null,
    });
    // Endpoints exist once the cluster is ready.
    if let (true, Some(obj)) = (status == "ready", value.as_object_mut()) {
        let host = format!("{}.pg.flympg.net", c.id);
        obj.insert(
            "endpoints".into(),
            json!({"primary": {
                "direct": {"host": host, "port": 5432},
                "pooler": {"host": format!("pgbouncer.{host}"), "port": 5432},
            }}),
        );
    }
    value
}

fn summary_json(c: &PostgresCluster, now: chrono::DateTime<chrono::Utc>) -> Value {
    let mut value = json!({
        "id": c.id,
        "name": c.name,
        "plan": c.plan,
        "region": c.region,
        "status": c.status(now),
        "created_at": c.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "attached_apps": [],
    });
    if let (Some(deleted), Some(obj)) = (c.deleted_at, value.as_object_mut()) {
        obj.insert(
            "deleted_at".into(),
            json!(deleted.to_rfc3339_opts(SecondsFormat::Secs, true)),
        );
    }
    value
}

fn org_for_slug(ctx: &Ctx<'_>, req: &Request<'_>, slug: &str) -> Result<String, Reply> {
    let org = ctx.state.org_by_slug(slug).or_else(|| {
        (slug == "personal")
            .then(|| ctx.state.personal_org_of(&req.principal.user_id(ctx.state)))
            .flatten()
    });
    let org = org.ok_or_else(|| P.not_found(format!("organization {slug:?} not found")))?;
    if !req.principal.can_use_org(ctx.state, &org.id) {
        return Err(P.unauthorized(format!("token has no access to organization {slug:?}")));
    }
    Ok(org.id.clone())
}

pub fn list(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let Some(slug) = req.query.get("org_slug").and_then(Value::as_str) else {
        return error(P, StatusCode::BAD_REQUEST, "org_slug is required");
    };
    let org_id = match org_for_slug(ctx, req, slug) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let include_deleted = matches!(
        req.query.get("include_deleted").and_then(Value::as_str),
        Some("true" | "1")
    );
    let data: Vec<Value> = ctx
        .state
        .postgres_clusters
        .values()
        .filter(|c| c.org_id == org_id && (include_deleted || c.deleted_at.is_none()))
        .map(|c| summary_json(c, ctx.now))
        .collect();
    Reply::json(StatusCode::OK, json!({"data": data}))
}

pub fn create(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let body = &req.body;
    let slug = body
        .get("org_slug")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let org_id = match org_for_slug(ctx, req, slug) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let name = match body.get("name").and_then(Value::as_str) {
        Some(name) => name.to_string(),
        None => format!("pg-{}", ids::lower_id(ctx.rng, 8)),
    };
    let taken = ctx
        .state
        .postgres_clusters
        .values()
        .any(|c| c.org_id == org_id && c.name == name && c.deleted_at.is_none());
    if taken {
        return P.unprocessable(format!(
            "a cluster named {name:?} already exists in this organization"
        ));
    }
    let text = |key: &str, default: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    let cluster = PostgresCluster {
        id: ids::lower_id(ctx.rng, 16),
        name,
        org_id,
        plan: text("plan", "basic"),
        region: text("region", "iad"),
        pg_major_version: text("pg_major_version", "17"),
        disk_size_gb: body
            .get("disk_size_gb")
            .and_then(Value::as_i64)
            .unwrap_or(10),
        pool_mode: text("pool_mode", "transaction"),
        postgis_enabled: body
            .get("postgis_enabled")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        created_at: ctx.now,
        ready_at: ctx.now + ctx.postgres_ready_after,
        deleted_at: None,
        databases: vec!["postgres".into()],
        users: Default::default(),
    };
    let reply = json!({"data": cluster_json(ctx.state, &cluster, ctx.now)});
    ctx.state
        .postgres_clusters
        .insert(cluster.id.clone(), cluster);
    Reply::json(StatusCode::CREATED, reply)
}

/// The cluster behind `{postgres_cluster_id}`, checked for access.
fn cluster_id(ctx: &Ctx<'_>, req: &Request<'_>) -> Result<String, Reply> {
    let id = req
        .params
        .get("postgres_cluster_id")
        .cloned()
        .unwrap_or_default();
    let cluster = ctx
        .state
        .postgres_clusters
        .get(&id)
        .ok_or_else(|| P.not_found(format!("cluster {id:?} not found")))?;
    if !req.principal.can_use_org(ctx.state, &cluster.org_id) {
        return Err(P.unauthorized("token has no access to this cluster"));
    }
    Ok(id)
}

pub fn show(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    match cluster_id(ctx, req) {
        Ok(id) => match ctx.state.postgres_clusters.get(&id) {
            Some(c) => Reply::json(
                StatusCode::OK,
                json!({"data": cluster_json(ctx.state, c, ctx.now)}),
            ),
            None => P.not_found("cluster not found"),
        },
        Err(reply) => reply,
    }
}

pub fn delete(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let id = match cluster_id(ctx, req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let now = ctx.now;
    match ctx.state.postgres_clusters.get_mut(&id) {
        Some(c) if c.deleted_at.is_some() => error(P, StatusCode::GONE, "cluster was deleted"),
        Some(c) => {
            c.deleted_at = Some(now);
            Reply::empty(StatusCode::ACCEPTED)
        }
        None => P.not_found("cluster not found"),
    }
}

/// Database and user names: start and end with an alphanumeric character,
/// hyphens and underscores inside, at most 63 characters.
fn valid_name(name: &str, lowercase_only: bool) -> bool {
    let alnum = |c: char| {
        if lowercase_only {
            c.is_ascii_lowercase() || c.is_ascii_digit()
        } else {
            c.is_ascii_alphanumeric()
        }
    };
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '_')
}

pub fn sub_resource(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Reply {
    let id = match cluster_id(ctx, req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let now = ctx.now;
    let password = ids::password(ctx.rng);
    let Some(cluster) = ctx.state.postgres_clusters.get_mut(&id) else {
        return P.not_found("cluster not found");
    };
    match cluster.status(now) {
        "ready" => {}
        "deleted" => return P.not_found("cluster was deleted"),
        _ => {
            let wait = (cluster.ready_at - now).num_seconds().max(1) as u64;
            let mut reply = error(
                P,
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster is not ready yet",
            );
            reply.retry_after_secs = Some(wait);
            return reply;
        }
    }
    let param = |name: &str| req.params.get(name).cloned().unwrap_or_default();
    let body_str = |name: &str| {
        req.body
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match req.operation_id {
        "Postgres_databases_list" => Reply::json(
            StatusCode::OK,
            json!({"data": cluster.databases.iter().map(|d| json!({"name": d})).collect::<Vec<_>>()}),
        ),
        "Postgres_databases_create" => {
            let name = body_str("name").unwrap_or_default();
            if !valid_name(&name, false) {
                return P.unprocessable(format!("invalid database name {name:?}"));
            }
            if cluster.databases.contains(&name) {
                return P.unprocessable(format!("database {name:?} already exists"));
            }
            cluster.databases.push(name.clone());
            Reply::json(StatusCode::CREATED, json!({"data": {"name": name}}))
        }
        "Postgres_databases_delete" => {
            let name = param("database_name");
            if !cluster.databases.contains(&name) {
                return P.not_found(format!("database {name:?} not found"));
            }
            cluster.databases.retain(|d| *d != name);
            Reply::json(StatusCode::OK, json!({"data": {"name": name}}))
        }
        "Postgres_users_list" => Reply::json(
            StatusCode::OK,
            json!({"data": cluster.users.iter().map(|(n, u)| json!({"username": n, "role": u.role})).collect::<Vec<_>>()}),
        ),
        "Postgres_users_create" => {
            let username = body_str("username").unwrap_or_default();
            let role = body_str("role").unwrap_or_default();
            if !valid_name(&username, true) {
                return P.unprocessable(format!("invalid username {username:?}"));
            }
            if cluster.users.contains_key(&username) {
                return error(
                    P,
                    StatusCode::CONFLICT,
                    format!("user {username:?} already exists"),
                );
            }
            cluster.users.insert(
                username.clone(),
                PostgresUser {
                    role: role.clone(),
                    password,
                    rotations: 0,
                },
            );
            Reply::json(
                StatusCode::CREATED,
                json!({"data": {"username": username, "role": role}}),
            )
        }
        "Postgres_users_delete" => {
            let username = param("username");
            match cluster.users.remove(&username) {
                Some(_) => Reply::empty(StatusCode::NO_CONTENT),
                None => P.not_found(format!("user {username:?} not found")),
            }
        }
        "Postgres_users_update_role" => {
            let username = param("username");
            let role = body_str("role").unwrap_or_default();
            match cluster.users.get_mut(&username) {
                Some(user) => {
                    user.role = role;
                    Reply::empty(StatusCode::NO_CONTENT)
                }
                None => P.not_found(format!("user {username:?} not found")),
            }
        }
        "Postgres_users_credentials" => {
            let username = param("username");
            match cluster.users.get(&username) {
                Some(user) => Reply::json(
                    StatusCode::OK,
                    json!({"data": {"username": username, "password": user.password}}),
                ),
                None => P.not_found(format!("user {username:?} not found")),
            }
        }
        "Postgres_users_rotate_password" => {
            let username = param("username");
            match cluster.users.get_mut(&username) {
                Some(user) => {
                    user.password = password;
                    user.rotations += 1;
                    Reply::json(
                        StatusCode::OK,
                        json!({"data": {"username": username, "password": user.password}}),
                    )
                }
                None => P.not_found(format!("user {username:?} not found")),
            }
        }
        other => error(
            P,
            StatusCode::NOT_IMPLEMENTED,
            format!("not implemented in the emulator: {other}"),
        ),
    }
}
