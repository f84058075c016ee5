//! The emulator's own control API under `/_emulator/…` (not Fly's): fault
//! injection, rate-limit settings, accepting invitations, drift, the whole
//! state and counters. Also the fault, counter and rate-limit machinery the
//! request path uses.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::StatusCode;
use rand::RngExt;
use rand::rngs::StdRng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Emulator;
use crate::state::State;

/// One fault rule; the first rule whose prefix matches a path applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRule {
    /// Path prefix the rule applies to (`/graphql`, `/v1/apps`); none = all
    /// of Fly's API (never the control API).
    pub path_prefix: Option<String>,
    /// Fraction of requests answered with `error_status` (5xx).
    pub error_fraction: f64,
    pub error_status: Option<u16>,
    /// Fraction of requests answered 429 with `Retry-After`.
    pub rate_limit_fraction: f64,
    pub retry_after_secs: Option<u64>,
    /// Latency added before every matching request.
    pub latency_ms: u64,
    /// Fraction of requests whose connection is closed without an answer.
    pub drop_fraction: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    pub rules: Vec<FaultRule>,
}

pub enum FaultDecision {
    None,
    Error(StatusCode),
    RateLimited(u64),
    Drop,
}

pub struct Faults {
    pub config: FaultConfig,
    /// Its own seeded generator, so fault decisions do not shift when the
    /// number of IDs drawn changes.
    pub rng: StdRng,
}

impl Faults {
    /// Added latency and what to do with a request to `path`.
    pub fn decide(&mut self, path: &str) -> (Duration, FaultDecision) {
        let Some(rule) = self
            .config
            .rules
            .iter()
            .find(|r| r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p)))
            .cloned()
        else {
            return (Duration::ZERO, FaultDecision::None);
        };
        let latency = Duration::from_millis(rule.latency_ms);
        // One draw per request keeps a seeded run reproducible whatever
        // fractions are set.
        let draw: f64 = self.rng.random();
        let decision = if draw < rule.drop_fraction {
            FaultDecision::Drop
        } else if draw < rule.drop_fraction + rule.error_fraction {
            let status = rule
                .error_status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_server_error())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            FaultDecision::Error(status)
        } else if draw < rule.drop_fraction + rule.error_fraction + rule.rate_limit_fraction {
            FaultDecision::RateLimited(rule.retry_after_secs.unwrap_or(1))
        } else {
            FaultDecision::None
        };
        (latency, decision)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub requests_total: u64,
    pub requests_by_path: BTreeMap<String, u64>,
    pub requests_by_operation: BTreeMap<String, u64>,
    pub responses_by_status: BTreeMap<u16, u64>,
    pub rate_limited_total: u64,
    pub rate_limited_by_operation: BTreeMap<String, u64>,
    pub faults_injected: BTreeMap<String, u64>,
}

impl Counters {
    pub fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_string()).or_default() += 1;
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Multiplies Fly's published rates and bursts (10 = ten times as
    /// lenient).
    pub scale: f64,
}

/// Fly's published Machines API limits: 1 request/s per action per app or
/// machine with a burst of 3; getting a machine 5/s with a burst of 10.
pub struct RateLimits {
    pub settings: RateLimitSettings,
    default_limiter: DefaultKeyedRateLimiter<String>,
    get_machine_limiter: DefaultKeyedRateLimiter<String>,
}

fn quota(per_second: f64, burst: f64, scale: f64) -> Quota {
    let rate = (per_second * scale).max(0.001);
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new((burst * scale).round().clamp(1.0, f64::from(u32::MAX)) as u32)
        .unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl RateLimits {
    pub fn new(settings: RateLimitSettings) -> Self {
        Self {
            settings,
            default_limiter: RateLimiter::keyed(quota(1.0, 3.0, settings.scale)),
            get_machine_limiter: RateLimiter::keyed(quota(5.0, 10.0, settings.scale)),
        }
    }

    /// `Err(seconds)` to wait when the bucket of this action and key is
    /// empty.
    pub fn check(&self, operation_id: &str, key: &str) -> Result<(), u64> {
        if !self.settings.enabled {
            return Ok(());
        }
        let limiter = if operation_id == "Machines_show" {
            &self.get_machine_limiter
        } else {
            &self.default_limiter
        };
        let bucket = format!("{operation_id} {key}");
        limiter.check_key(&bucket).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

fn control_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// A control request refused: the status and message of its
/// `{"error": …}` answer.
struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal(status, message.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        control_error(self.0, self.1)
    }
}

/// A control request's JSON body, or the 400 that names `what`.
fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("{what}: {e}")))
}

/// The emulator's state, or the 500 for a poisoned lock.
fn lock_state(emu: &Emulator) -> Result<MutexGuard<'_, State>, Refusal> {
    emu.state
        .lock()
        .map_err(|_| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "state lock poisoned"))
}

type Shared = AxumState<Arc<Emulator>>;

pub fn router() -> Router<Arc<Emulator>> {
    Router::new()
        .route("/state", get(state_dump))
        .route("/counters", get(counters))
        .route(
            "/faults",
            get(faults_get).put(faults_put).delete(faults_clear),
        )
        .route("/rate-limits", get(rate_limits_get).put(rate_limits_put))
        .route("/invitations/{id}/accept", post(accept_invitation))
        .route("/drift/remove-member", post(remove_member))
        .route("/drift/revoke-token", post(revoke_token))
        .route("/drift/age-token", post(age_token))
        .route("/drift/destroy-machine", post(destroy_machine))
        .route("/postgres/{id}/ready", put(postgres_ready))
}

async fn state_dump(AxumState(emu): Shared) -> Response {
    match emu.state.lock() {
        Ok(state) => Json(json!(&*state)).into_response(),
        Err(_) => control_error(StatusCode::INTERNAL_SERVER_ERROR, "state lock poisoned"),
    }
}

async fn counters(AxumState(emu): Shared) -> Response {
    match emu.counters.lock() {
        Ok(counters) => Json(json!(&*counters)).into_response(),
        Err(_) => control_error(StatusCode::INTERNAL_SERVER_ERROR, "counters lock poisoned"),
    }
}

async fn faults_get(AxumState(emu): Shared) -> Response {
    match emu.faults.lock() {
        Ok(faults) => Json(json!(&faults.config)).into_response(),
        Err(_) => control_error(StatusCode::INTERNAL_SERVER_ERROR, "faults lock poisoned"),
    }
}

async fn faults_put(AxumState(emu): Shared, body: Bytes) -> Response {
    let config: FaultConfig = match parse(&body, "fault config") {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    let fractions_ok = config.rules.iter().all(|r| {
        [r.error_fraction, r.rate_limit_fraction, r.drop_fraction]
            .iter()
            .all(|f| (0.0..=1.0).contains(f))
            && r.error_fraction + r.rate_limit_fraction + r.drop_fraction <= 1.0
    });
    if !fractions_ok {
        return control_error(
            StatusCode::BAD_REQUEST,
            "fractions must be within 0..=1 and add up to at most 1",
        );
    }
    match emu.faults.lock() {
        Ok(mut faults) => {
            faults.config = config;
            Json(json!(&faults.config)).into_response()
        }
        Err(_) => control_error(StatusCode::INTERNAL_SERVER_ERROR, "faults lock poisoned"),
    }
}

async fn faults_clear(AxumState(emu): Shared) -> Response {
    match emu.faults.lock() {
        Ok(mut faults) => {
            faults.config = FaultConfig::default();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(_) => control_error(StatusCode::INTERNAL_SERVER_ERROR, "faults lock poisoned"),
    }
}

async fn rate_limits_get(AxumState(emu): Shared) -> Response {
    match emu.rate_limits.read() {
        Ok(limits) => Json(json!(limits.settings)).into_response(),
        Err(_) => control_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rate limits lock poisoned",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitChange {
    enabled: Option<bool>,
    scale: Option<f64>,
}

async fn rate_limits_put(AxumState(emu): Shared, body: Bytes) -> Response {
    let change: RateLimitChange = match parse(&body, "rate limits") {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    if change.scale.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
        return control_error(StatusCode::BAD_REQUEST, "scale must be a positive number");
    }
    match emu.rate_limits.write() {
        Ok(mut limits) => {
            let settings = RateLimitSettings {
                enabled: change.enabled.unwrap_or(limits.settings.enabled),
                scale: change.scale.unwrap_or(limits.settings.scale),
            };
            // New buckets: a changed quota starts full.
            *limits = RateLimits::new(settings);
            Json(json!(settings)).into_response()
        }
        Err(_) => control_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rate limits lock poisoned",
        ),
    }
}

async fn accept_invitation(AxumState(emu): Shared, Path(id): Path<String>) -> Response {
    let now = emu.now();
    let (Ok(mut state), Ok(mut rng)) = (emu.state.lock(), emu.ids.lock()) else {
        return control_error(StatusCode::INTERNAL_SERVER_ERROR, "state lock poisoned");
    };
    match crate::resolvers::accept_invitation(&mut state, &mut rng, &id, now) {
        Ok(user) => Json(json!({"user": {"id": user.id, "email": user.email}})).into_response(),
        Err(message) if message.contains("already") => control_error(StatusCode::CONFLICT, message),
        Err(message) => control_error(StatusCode::NOT_FOUND, message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveMember {
    /// Organization slug or node ID.
    organization: String,
    user_id: Option<String>,
    email: Option<String>,
}

async fn remove_member(AxumState(emu): Shared, body: Bytes) -> Result<Response, Refusal> {
    let change: RemoveMember = parse(&body, "remove-member")?;
    let mut state = lock_state(&emu)?;
    let user_id = match (&change.user_id, &change.email) {
        (Some(id), _) => id.clone(),
        (None, Some(email)) => match state.user_by_email(email) {
            Some(u) => u.id.clone(),
            None => {
                return Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!("no user {email:?}"),
                ));
            }
        },
        (None, None) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "user_id or email is required",
            ));
        }
    };
    let org = if state.organizations.contains_key(&change.organization) {
        state.organizations.get_mut(&change.organization)
    } else {
        state.org_by_slug_mut(&change.organization)
    };
    let Some(org) = org else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no organization {:?}", change.organization),
        ));
    };
    let before = org.members.len();
    org.members.retain(|m| m.user_id != user_id);
    if org.members.len() == before {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "not a member"));
    }
    Ok(Json(json!({"removed": user_id})).into_response())
}

/// Token `id`, or the 404 that names it.
fn token_mut<'s>(state: &'s mut State, id: &str) -> Result<&'s mut crate::state::Token, Refusal> {
    state
        .tokens
        .iter_mut()
        .find(|t| t.id == id)
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no token {id:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeToken {
    token_id: String,
}

async fn revoke_token(AxumState(emu): Shared, body: Bytes) -> Result<Response, Refusal> {
    let change: RevokeToken = parse(&body, "revoke-token")?;
    let now = emu.now();
    let mut state = lock_state(&emu)?;
    let token = token_mut(&mut state, &change.token_id)?;
    token.revoked_at.get_or_insert(now);
    token.revoked_by = Some("emulator drift".into());
    Ok(Json(json!({"revoked": token.id})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgeToken {
    token_id: String,
    /// How far back its issue and expiry times move.
    seconds: u32,
}

/// Moves a token's `created_at` and `expires_at` back, as if it had been
/// issued `seconds` earlier: how a test shows rotation before expiry
/// without waiting hours (Fly's shortest token lives one hour).
async fn age_token(AxumState(emu): Shared, body: Bytes) -> Result<Response, Refusal> {
    let change: AgeToken = parse(&body, "age-token")?;
    let by = chrono::Duration::seconds(i64::from(change.seconds));
    let mut state = lock_state(&emu)?;
    let token = token_mut(&mut state, &change.token_id)?;
    token.created_at -= by;
    token.expires_at -= by;
    Ok(Json(json!({
        "aged": token.id,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestroyMachine {
    app: String,
    machine_id: String,
}

async fn destroy_machine(AxumState(emu): Shared, body: Bytes) -> Result<Response, Refusal> {
    let change: DestroyMachine = parse(&body, "destroy-machine")?;
    let mut state = lock_state(&emu)?;
    let Some(app) = state.apps.get_mut(&change.app) else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no app {:?}", change.app),
        ));
    };
    if app.machines.remove(&change.machine_id).is_none() {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no machine {:?}", change.machine_id),
        ));
    }
    for volume in app.volumes.values_mut() {
        if volume.attached_machine_id.as_deref() == Some(change.machine_id.as_str()) {
            volume.attached_machine_id = None;
        }
    }
    Ok(Json(json!({"destroyed": change.machine_id})).into_response())
}

async fn postgres_ready(AxumState(emu): Shared, Path(id): Path<String>) -> Response {
    let now = emu.now();
    let Ok(mut state) = emu.state.lock() else {
        return control_error(StatusCode::INTERNAL_SERVER_ERROR, "state lock poisoned");
    };
    match state.postgres_clusters.get_mut(&id) {
        Some(cluster) => {
            cluster.ready_at = now;
            Json(json!({"ready": id})).into_response()
        }
        None => control_error(StatusCode::NOT_FOUND, format!("no cluster {id:?}")),
    }
}
