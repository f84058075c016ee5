//! A stateful emulator of Fly.io's GraphQL API and Machines REST API, built
//! from Fly's published definitions (`api/schema.graphql`,
//! `api/machines-openapi.json`) so bulkhead's Fly provider can be tested
//! against something that answers like Fly, strictly: documents and bodies
//! are validated, tokens are scoped, rate limits apply, and faults can be
//! switched on. See README.md for the control API.

pub mod auth;
pub mod control;
pub mod graphql;
pub mod ids;
pub mod openapi;
pub mod postgres;
pub mod resolvers;
pub mod rest;
pub mod state;

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::auth::{AuthError, Principal};
use crate::control::{Counters, FaultConfig, FaultDecision, Faults, RateLimitSettings, RateLimits};
use crate::graphql::GraphqlSchema;
use crate::openapi::{OpenApi, RouteMatch};
use crate::rest::ErrorShape;
use crate::state::{Membership, OrgType, Organization, Role, State, User};

/// Bodies above this are refused; Fly's requests are small JSON documents.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// The bootstrap user's token (`Authorization: Bearer …`).
    pub admin_token: String,
    pub admin_email: String,
    pub seed: u64,
    pub rate_limits: RateLimitSettings,
    /// How long a Managed Postgres cluster stays `creating`.
    pub postgres_ready_after: Duration,
    /// Append one JSON line per request here.
    pub request_log: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_token: String::new(),
            admin_email: "admin@emulator.invalid".into(),
            seed: 0,
            rate_limits: RateLimitSettings {
                enabled: true,
                scale: 1.0,
            },
            postgres_ready_after: Duration::from_secs(3),
            request_log: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Schema(#[from] graphql::SchemaError),
    #[error(transparent)]
    Spec(#[from] openapi::SpecError),
    #[error("request log {path}: {source}")]
    RequestLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listener: {0}")]
    Listener(std::io::Error),
}

pub struct Emulator {
    pub config: Config,
    pub state: Mutex<State>,
    /// Seeded generator for IDs and secrets.
    pub ids: Mutex<StdRng>,
    pub graphql: GraphqlSchema,
    pub openapi: OpenApi,
    pub rate_limits: RwLock<RateLimits>,
    pub faults: Mutex<Faults>,
    pub counters: Mutex<Counters>,
    request_log: Option<Mutex<File>>,
}

impl Emulator {
    pub fn new(config: Config) -> Result<Self, Error> {
        let graphql = GraphqlSchema::load()?;
        let openapi = OpenApi::load()?;
        let mut ids = StdRng::seed_from_u64(config.seed);
        let now = Utc::now();
        let mut state = State::default();
        // The bootstrap user owns a personal organization, as every Fly
        // user does.
        let admin = User {
            id: ids::node_id(&mut ids),
            email: config.admin_email.clone(),
            name: "admin".into(),
            created_at: now,
        };
        let personal = Organization {
            id: ids::node_id(&mut ids),
            internal_numeric_id: state.next_numeric_id(),
            slug: "personal".into(),
            name: "admin's personal organization".into(),
            org_type: OrgType::Personal,
            created_at: now,
            members: vec![Membership {
                user_id: admin.id.clone(),
                role: Role::Admin,
                joined_at: now,
            }],
            invitations: Vec::new(),
        };
        state.admin_user_id = admin.id.clone();
        state.users.insert(admin.id.clone(), admin);
        state.organizations.insert(personal.id.clone(), personal);
        let request_log = match &config.request_log {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::RequestLog {
                        path: path.clone(),
                        source,
                    })?,
            )),
            None => None,
        };
        Ok(Self {
            rate_limits: RwLock::new(RateLimits::new(config.rate_limits)),
            faults: Mutex::new(Faults {
                config: FaultConfig::default(),
                rng: StdRng::seed_from_u64(config.seed.wrapping_add(1)),
            }),
            counters: Mutex::new(Counters::default()),
            state: Mutex::new(state),
            ids: Mutex::new(ids),
            graphql,
            openapi,
            request_log,
            config,
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let state = self.state.lock().map_err(|_| AuthError::Unknown)?;
        auth::authenticate(headers, &self.config.admin_token, &state, self.now())
    }

    /// Every secret the emulator knows replaced, and anything shaped like
    /// a macaroon, so a logged body never carries a credential.
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        if !self.config.admin_token.is_empty() {
            out = out.replace(&self.config.admin_token, "[redacted]");
        }
        let mut redacted = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(pos) = rest.find("fm2_") {
            redacted.push_str(&rest[..pos]);
            redacted.push_str("[redacted]");
            let tail = &rest[pos + 4..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(tail.len());
            rest = &tail[end..];
        }
        redacted.push_str(rest);
        redacted
    }

    fn log_request(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &Bytes,
        status: Option<u16>,
        scheme: Option<String>,
    ) {
        let Some(log) = &self.request_log else { return };
        let text = self.redact(&String::from_utf8_lossy(body));
        let mut body_value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        // App secrets (passwords, SSH keys) are set by value: the log keeps
        // their names only.
        if let Some(values) = body_value.get_mut("values").and_then(Value::as_object_mut) {
            for value in values.values_mut() {
                *value = Value::String("[redacted]".into());
            }
        }
        let line = json!({
            "time": self.now().to_rfc3339(),
            "method": method.as_str(),
            "path": path,
            "query": query.map(|q| self.redact(q)),
            "body": body_value,
            "status": status,
            "authorization": scheme,
        });
        if let Ok(mut file) = log.lock() {
            // A failed log write must not fail the request it describes.
            let _ = writeln!(file, "{line}");
        }
    }
}

/// A running emulator.
pub struct Server {
    pub addr: SocketAddr,
    pub emulator: Arc<Emulator>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Handed to each request so a fault can close its connection unanswered.
#[derive(Clone)]
struct ConnectionDrop(Arc<Notify>);

pub fn router(emulator: Arc<Emulator>) -> Router {
    Router::new()
        .route("/graphql", post(graphql_handler))
        .nest("/_emulator", control::router())
        .fallback(rest_handler)
        .layer(middleware::from_fn_with_state(emulator.clone(), outer))
        .with_state(emulator)
}

/// Serves on `listener` until the returned server is shut down. Our own
/// accept loop (instead of `axum::serve`) lets the drop fault end a
/// connection without any answer.
pub async fn serve(config: Config, listener: TcpListener) -> Result<Server, Error> {
    let emulator = Arc::new(Emulator::new(config)?);
    let addr = listener.local_addr().map_err(Error::Listener)?;
    let app = router(emulator.clone());
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = &mut rx => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, _) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let app = app.clone();
            tokio::spawn(async move {
                let drop_signal = Arc::new(Notify::new());
                let signal = drop_signal.clone();
                let service =
                    tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectionDrop(signal.clone()));
                        let mut app = app.clone();
                        async move { tower::Service::call(&mut app, req.map(Body::new)).await }
                    });
                let connection = hyper::server::conn::http1::Builder::new().serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(service),
                );
                tokio::select! {
                    result = connection => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                    }
                    // Dropping the connection future closes the socket.
                    _ = drop_signal.notified() => tracing::debug!("connection dropped by fault injection"),
                }
            });
        }
    });
    Ok(Server {
        addr,
        emulator,
        shutdown: Some(tx),
        task,
    })
}

fn error_shape_for(path: &str) -> ErrorShape {
    if path.starts_with("/v1/postgres") {
        ErrorShape::Postgres
    } else {
        ErrorShape::Machines
    }
}

/// An answer in the error shape of the API the path belongs to.
fn api_error(path: &str, status: StatusCode, message: &str) -> Response {
    let body = if path.starts_with("/graphql") {
        let code = match status {
            StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
            StatusCode::TOO_MANY_REQUESTS => "RATE_LIMITED",
            _ => "INTERNAL_SERVER_ERROR",
        };
        graphql::request_error_body(&[message.to_string()], code)
    } else {
        rest::error(error_shape_for(path), status, message)
            .body
            .unwrap_or(Value::Null)
    };
    (status, axum::Json(body)).into_response()
}

fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    response
}

/// Counting, faults, body capture and the request log, around every route.
async fn outer(AxumState(emu): AxumState<Arc<Emulator>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let scheme = auth::auth_scheme(req.headers());
    let is_control = path.starts_with("/_emulator");
    if let Ok(mut counters) = emu.counters.lock() {
        counters.requests_total += 1;
        Counters::bump(&mut counters.requests_by_path, &path);
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return api_error(
                &path,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or unreadable",
            );
        }
    };
    // One request log entry with the status answered (`None`: dropped).
    let log_request = |status: Option<u16>| {
        emu.log_request(
            &method,
            &path,
            query.as_deref(),
            &bytes,
            status,
            scheme.clone(),
        )
    };
    if !is_control {
        let decision = emu.faults.lock().ok().map(|mut f| f.decide(&path));
        if let Some((latency, decision)) = decision {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let injected = match decision {
                FaultDecision::None => None,
                FaultDecision::Drop => {
                    log_request(None);
                    bump_fault(&emu, "drop");
                    if let Some(signal) = parts.extensions.get::<ConnectionDrop>() {
                        signal.0.notify_one();
                        // The connection task drops this future with the
                        // connection.
                        std::future::pending::<()>().await;
                    }
                    Some(api_error(
                        &path,
                        StatusCode::BAD_GATEWAY,
                        "connection dropped",
                    ))
                }
                FaultDecision::Error(status) => {
                    bump_fault(&emu, "error");
                    Some(api_error(&path, status, "injected fault: internal error"))
                }
                FaultDecision::RateLimited(seconds) => {
                    bump_fault(&emu, "rate_limit");
                    Some(with_retry_after(
                        api_error(
                            &path,
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate limited (injected)",
                        ),
                        seconds,
                    ))
                }
            };
            if let Some(response) = injected {
                log_request(Some(response.status().as_u16()));
                count_status(&emu, response.status());
                return response;
            }
        }
    }
    let req = Request::from_parts(parts, Body::from(bytes.clone()));
    let response = next.run(req).await;
    count_status(&emu, response.status());
    if !is_control {
        tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
        log_request(Some(response.status().as_u16()));
    }
    response
}

fn bump_fault(emu: &Emulator, kind: &str) {
    if let Ok(mut counters) = emu.counters.lock() {
        Counters::bump(&mut counters.faults_injected, kind);
    }
}

fn count_status(emu: &Emulator, status: StatusCode) {
    if let Ok(mut counters) = emu.counters.lock() {
        *counters
            .responses_by_status
            .entry(status.as_u16())
            .or_default() += 1;
    }
}

fn auth_message(error: &AuthError) -> String {
    match error {
        AuthError::Missing => "You must be authenticated to view this.".into(),
        other => format!("unauthorized: {other}"),
    }
}

async fn graphql_handler(
    AxumState(emu): AxumState<Arc<Emulator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let body = graphql::request_error_body(
                &[format!("request body is not JSON: {e}")],
                "BAD_REQUEST",
            );
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let Some(query) = request.get("query").and_then(Value::as_str) else {
        let body = graphql::request_error_body(&["query is required".into()], "BAD_REQUEST");
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    };
    let operation_name = request.get("operationName").and_then(Value::as_str);
    let variables = match request.get("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => {
            let body =
                graphql::request_error_body(&["variables must be an object".into()], "BAD_REQUEST");
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let document = match emu.graphql.validate(query) {
        Ok(doc) => doc,
        Err(messages) => {
            let body = graphql::request_error_body(&messages, "GRAPHQL_VALIDATION_FAILED");
            return (StatusCode::OK, axum::Json(body)).into_response();
        }
    };
    let principal = match emu.authenticate(&headers) {
        Ok(p) => p,
        Err(e) => return api_error("/graphql", StatusCode::UNAUTHORIZED, &auth_message(&e)),
    };
    let now = emu.now();
    let (Ok(mut state), Ok(mut rng)) = (emu.state.lock(), emu.ids.lock()) else {
        return api_error(
            "/graphql",
            StatusCode::INTERNAL_SERVER_ERROR,
            "state lock poisoned",
        );
    };
    let mut resolver = resolvers::Resolver {
        state: &mut state,
        rng: &mut rng,
        principal: &principal,
        now,
    };
    let body = graphql::execute(
        &emu.graphql,
        &document,
        operation_name,
        &variables,
        &mut resolver,
    );
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The key a Machines API action is rate-limited under: the machine, the
/// app, or the cluster the path names.
fn rate_limit_key(params: &std::collections::HashMap<String, String>) -> String {
    ["machine_id", "app_name", "postgres_cluster_id", "org_slug"]
        .iter()
        .find_map(|name| params.get(*name).map(|v| format!("{name}={v}")))
        .unwrap_or_else(|| "-".into())
}

async fn rest_handler(AxumState(emu): AxumState<Arc<Emulator>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let shape = error_shape_for(&path);
    let reply_error = |status: StatusCode, message: &str| {
        let reply = rest::error(shape, status, message);
        (status, axum::Json(reply.body.unwrap_or(Value::Null))).into_response()
    };
    if !path.starts_with("/v1/") {
        return reply_error(StatusCode::NOT_FOUND, "not found");
    }
    let (op, params) = match emu.openapi.route(req.method().as_str(), &path) {
        RouteMatch::Found(op, params) => (op, params),
        RouteMatch::MethodNotAllowed => {
            return reply_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        RouteMatch::NotFound => return reply_error(StatusCode::NOT_FOUND, "not found"),
    };
    if let Ok(mut counters) = emu.counters.lock() {
        Counters::bump(&mut counters.requests_by_operation, &op.operation_id);
    }
    let limited = emu
        .rate_limits
        .read()
        .map(|l| l.check(&op.operation_id, &rate_limit_key(&params)))
        .unwrap_or(Ok(()));
    if let Err(seconds) = limited {
        if let Ok(mut counters) = emu.counters.lock() {
            counters.rate_limited_total += 1;
            Counters::bump(&mut counters.rate_limited_by_operation, &op.operation_id);
        }
        return with_retry_after(
            reply_error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded"),
            seconds,
        );
    }
    let principal = match emu.authenticate(req.headers()) {
        Ok(p) => p,
        Err(e) => return reply_error(StatusCode::UNAUTHORIZED, &auth_message(&e)),
    };
    let query = openapi::parse_query(req.uri().query());
    let bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return reply_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let body = if op.request_schema.is_none() {
        Value::Null
    } else if bytes.iter().all(u8::is_ascii_whitespace) {
        if op.request_required {
            return reply_error(StatusCode::BAD_REQUEST, "request body is required");
        }
        json!({})
    } else {
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return reply_error(
                    StatusCode::BAD_REQUEST,
                    &format!("request body is not valid JSON: {e}"),
                );
            }
        };
        match emu.openapi.check_request(op, &body) {
            Ok(problems) if problems.is_empty() => body,
            Ok(problems) => return reply_error(StatusCode::BAD_REQUEST, &problems.join("; ")),
            Err(internal) => return reply_error(StatusCode::INTERNAL_SERVER_ERROR, &internal),
        }
    };
    let request = rest::Request {
        operation_id: &op.operation_id,
        params,
        query,
        body,
        principal,
    };
    let reply = {
        let (Ok(mut state), Ok(mut rng)) = (emu.state.lock(), emu.ids.lock()) else {
            return reply_error(StatusCode::INTERNAL_SERVER_ERROR, "state lock poisoned");
        };
        let mut ctx = rest::Ctx {
            state: &mut state,
            rng: &mut rng,
            now: emu.now(),
            postgres_ready_after: chrono::Duration::from_std(emu.config.postgres_ready_after)
                .unwrap_or_else(|_| chrono::Duration::seconds(3)),
        };
        rest::handle(&mut ctx, &request)
    };
    let mut response = match &reply.body {
        Some(body) => {
            // Our answers must fit Fly's response schemas; a mismatch is an
            // emulator bug, made loud.
            match emu.openapi.check_response(op, reply.status.as_u16(), body) {
                Ok(problems) if problems.is_empty() => {
                    (reply.status, axum::Json(body.clone())).into_response()
                }
                Ok(problems) => {
                    let problems = emu.redact(&problems.join("; "));
                    tracing::error!(operation = %op.operation_id, %problems, "emulator response does not match the spec");
                    reply_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("emulator bug: response does not match the spec: {problems}"),
                    )
                }
                Err(internal) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, &internal),
            }
        }
        None => reply.status.into_response(),
    };
    if let Some(seconds) = reply.retry_after_secs {
        response = with_retry_after(response, seconds);
    }
    response
}
