//! Fly.io: organizations, members and tokens over Fly's GraphQL API.
//!
//! [`FlyApi`] is the one HTTP client of the process (so its rate limiter
//! holds for every reconcile at once); [`FlyOrganizations`] pairs it with
//! one Organization's credentials. Every GraphQL document the provider
//! sends is a constant in [`operations`], checked against Fly's published
//! schema by a test.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::StatusCode;
use serde_json::{Value, json};
use tracing::debug;

use super::{ProviderError, Secret};
use crate::reasons;

pub mod database_cluster;
pub mod flex;
pub mod operations;
pub mod organization;

pub use database_cluster::FlyManagedPostgres;
pub use flex::FlyFlexPostgres;
pub use operations::Operation;
pub use organization::FlyOrganizations;

/// Where Fly's APIs are and how hard bulkhead may use them.
#[derive(Clone, Debug)]
pub struct FlySettings {
    pub graphql_url: String,
    /// The Machines REST API (for the Environment and DatabaseCluster parts
    /// of the provider, still to come).
    pub machines_url: String,
    /// Longest wait for one HTTP answer.
    pub request_timeout: Duration,
    /// Client-side limit of requests per second to Fly, all objects
    /// together; bursts up to twice that.
    pub requests_per_second: u32,
    /// Attempts of one call that may be retried (idempotent ones).
    pub attempts: u32,
    /// First backoff between attempts; doubles each time, with jitter.
    pub backoff: Duration,
}

pub const DEFAULT_GRAPHQL_URL: &str = "https://api.fly.io/graphql";
pub const DEFAULT_MACHINES_URL: &str = "https://api.machines.dev";

impl Default for FlySettings {
    fn default() -> Self {
        FlySettings {
            graphql_url: DEFAULT_GRAPHQL_URL.to_string(),
            machines_url: DEFAULT_MACHINES_URL.to_string(),
            request_timeout: Duration::from_secs(30),
            requests_per_second: 10,
            attempts: 5,
            backoff: Duration::from_millis(200),
        }
    }
}

/// Longest `Retry-After` honoured; a longer one is cut to this, so a
/// reconcile never sleeps for minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The `Authorization` header for a Fly token: macaroons (`fm1r_`, `fm1a_`,
/// `fm2_`, or already in `FlyV1 …` form) as `FlyV1`, anything else (a user
/// token) as `Bearer`.
pub fn authorization(token: &Secret) -> String {
    let token = token.expose().trim();
    if token.starts_with("FlyV1 ") {
        token.to_string()
    } else if ["fm1r_", "fm1a_", "fm2_"]
        .iter()
        .any(|p| token.starts_with(p))
    {
        format!("FlyV1 {token}")
    } else {
        format!("Bearer {token}")
    }
}

/// One GraphQL error entry, as Fly sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphqlError {
    pub message: String,
    pub code: Option<String>,
}

/// How a call failed: `NotFound` is an answer (observe turns it into
/// "missing"), everything else a [`ProviderError`].
#[derive(Debug)]
pub enum CallError {
    NotFound(String),
    Provider(ProviderError),
}

impl From<CallError> for ProviderError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotFound(message) => {
                ProviderError::transient(reasons::PROVIDER_ERROR, message)
            }
            CallError::Provider(e) => e,
        }
    }
}

impl From<ProviderError> for CallError {
    fn from(e: ProviderError) -> Self {
        CallError::Provider(e)
    }
}

/// The GraphQL `errors[]` of an answer as a [`CallError`]. `credentials`
/// names the Secret the token came from (never the token).
pub fn classify_errors(
    operation: &str,
    errors: &[GraphqlError],
    credentials: &str,
) -> Option<CallError> {
    let first = errors.first()?;
    let messages = errors
        .iter()
        .map(|e| e.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let message = format!("Fly {operation}: {messages}");
    let error = match first.code.as_deref() {
        Some("NOT_FOUND") => return Some(CallError::NotFound(message)),
        Some("UNAUTHORIZED") | Some("UNAUTHENTICATED") | Some("FORBIDDEN") => {
            ProviderError::terminal(
                reasons::PERMISSION_DENIED,
                format!("{message} (credentials from {credentials})"),
            )
        }
        Some("VALIDATION") | Some("BAD_USER_INPUT") => {
            ProviderError::terminal(reasons::REQUEST_REJECTED, message)
        }
        Some("GRAPHQL_VALIDATION_FAILED") | Some("NOT_IMPLEMENTED") => {
            ProviderError::terminal(reasons::UNEXPECTED_RESPONSE, message)
        }
        _ if first.message.contains("Could not find") || first.message.contains("not found") => {
            return Some(CallError::NotFound(message));
        }
        _ => ProviderError::transient(reasons::PROVIDER_ERROR, message),
    };
    Some(CallError::Provider(error))
}

fn parse_errors(body: &Value) -> Vec<GraphqlError> {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|e| GraphqlError {
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("error without a message")
                        .to_string(),
                    code: e
                        .pointer("/extensions/code")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `Retry-After` in seconds (Fly sends seconds), capped.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs).min(MAX_RETRY_AFTER))
}

/// The wait before attempt `attempt + 1`: `base · 2^attempt`, plus up to as
/// much again at random, so many reconciles retrying at once spread out.
pub fn jittered(base: Duration, attempt: u32) -> Duration {
    use rand::RngExt;
    let exp = base.saturating_mul(1u32 << attempt.min(6));
    let jitter_ms = rand::rng().random_range(0..=exp.as_millis().min(60_000) as u64);
    exp + Duration::from_millis(jitter_ms)
}

/// What one attempt came to.
enum Attempt {
    Done(Value),
    /// Try again after this long, if attempts remain (`None`: backoff).
    Retry {
        after: Option<Duration>,
        error: ProviderError,
        /// Whether the server said it did not process the request (429),
        /// so even a non-idempotent call may be sent again.
        refused: bool,
    },
    Failed(CallError),
}

/// The process's Fly API client.
pub struct FlyApi {
    http: reqwest::Client,
    settings: FlySettings,
    limiter: DefaultDirectRateLimiter,
    /// Fly's published Machines API limits, per action and per app (or
    /// machine, cluster, organization): 1 request/s with a burst of 3, and
    /// 5/s with a burst of 10 for getting one machine. Waiting here is
    /// cheaper than a 429 and its `Retry-After`.
    per_target: governor::DefaultKeyedRateLimiter<String>,
    get_machine: governor::DefaultKeyedRateLimiter<String>,
}

/// One request per `period`, bursts of `burst`.
fn per_period(period: Duration, burst: NonZeroU32) -> Quota {
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// One backend's way to Fly for one reconcile: the process's API client,
/// the token its provider spec names, and where that token came from (for
/// messages, never the token).
pub struct FlySession {
    api: Arc<FlyApi>,
    token: Secret,
    credentials: String,
}

impl FlySession {
    pub fn new(api: Arc<FlyApi>, token: Secret, credentials: String) -> Self {
        FlySession {
            api,
            token,
            credentials,
        }
    }

    pub fn settings(&self) -> &FlySettings {
        self.api.settings()
    }

    /// [`FlyApi::graphql`] with this session's token.
    pub async fn graphql(
        &self,
        operation: &Operation,
        variables: Value,
    ) -> Result<Value, CallError> {
        self.api
            .graphql(&self.token, operation, variables, &self.credentials)
            .await
    }

    /// [`FlyApi::rest`] with this session's token.
    pub async fn rest(&self, call: Rest<'_>) -> Result<Value, CallError> {
        self.api.rest(&self.token, &self.credentials, call).await
    }
}

/// One Machines REST call: method, path and query, body, its OpenAPI
/// `operationId` (for rate limits and messages), and whether repeating it
/// after a lost answer is safe. GET, DELETE and PATCH are; a POST only when
/// marked [`Rest::retry_safe`] (it carries an idempotency key, or sets
/// rather than adds).
pub struct Rest<'a> {
    method: http::Method,
    path: &'a str,
    query: &'a [(&'a str, &'a str)],
    body: Option<&'a Value>,
    operation: &'static str,
    idempotent: bool,
}

impl<'a> Rest<'a> {
    fn new(
        method: http::Method,
        path: &'a str,
        body: Option<&'a Value>,
        operation: &'static str,
    ) -> Self {
        let idempotent = method != http::Method::POST;
        Rest {
            method,
            path,
            query: &[],
            body,
            operation,
            idempotent,
        }
    }

    pub fn get(path: &'a str, operation: &'static str) -> Self {
        Rest::new(http::Method::GET, path, None, operation)
    }

    pub fn delete(path: &'a str, operation: &'static str) -> Self {
        Rest::new(http::Method::DELETE, path, None, operation)
    }

    pub fn post(path: &'a str, body: Option<&'a Value>, operation: &'static str) -> Self {
        Rest::new(http::Method::POST, path, body, operation)
    }

    pub fn patch(path: &'a str, body: Option<&'a Value>, operation: &'static str) -> Self {
        Rest::new(http::Method::PATCH, path, body, operation)
    }

    pub fn query(self, query: &'a [(&'a str, &'a str)]) -> Self {
        Rest { query, ..self }
    }

    /// A POST that may be repeated: retried on 5xx and connection errors
    /// like the other methods.
    pub fn retry_safe(self) -> Self {
        Rest {
            idempotent: true,
            ..self
        }
    }
}

/// What Fly counts a Machines API call against: the first of the machine,
/// the app, the Managed Postgres cluster or the organization the call
/// names (as `/v1/apps/{app}/machines/{id}/…`, `/v1/postgres/{id}/…`, or
/// the `org_slug` query).
fn rate_limit_target(path: &str, query: &[(&str, &str)]) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let after = |name: &str| {
        segments
            .iter()
            .position(|s| *s == name)
            .and_then(|i| segments.get(i + 1))
            .copied()
    };
    after("machines")
        .map(|m| format!("machine={m}"))
        .or_else(|| after("apps").map(|a| format!("app={a}")))
        .or_else(|| after("postgres").map(|c| format!("cluster={c}")))
        .or_else(|| {
            query
                .iter()
                .find(|(k, _)| *k == "org_slug")
                .map(|(_, v)| format!("org={v}"))
        })
        .unwrap_or_default()
}

impl std::fmt::Debug for FlyApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlyApi")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl FlyApi {
    pub fn new(settings: FlySettings) -> Result<Arc<Self>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("Fly client TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("Fly client setup: {e}"))?;
        let rate = NonZeroU32::new(settings.requests_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        Ok(Arc::new(FlyApi {
            http,
            settings,
            limiter,
            // A tenth slower than Fly's rates, so jitter on the way
            // never lands two calls closer than Fly counts.
            per_target: RateLimiter::keyed(per_period(Duration::from_millis(1100), n(3))),
            get_machine: RateLimiter::keyed(per_period(Duration::from_millis(220), n(10))),
        }))
    }

    pub fn settings(&self) -> &FlySettings {
        &self.settings
    }

    /// Runs one GraphQL operation and returns its `data`. Queries and
    /// idempotent mutations are retried on 5xx and connection errors with
    /// jittered backoff; every call is retried after a 429 (the server did
    /// not process it), honouring `Retry-After`. `credentials` names where
    /// the token came from, for messages (never the token).
    pub async fn graphql(
        &self,
        token: &Secret,
        operation: &Operation,
        variables: Value,
        credentials: &str,
    ) -> Result<Value, CallError> {
        let body = json!({
            "query": operation.document,
            "operationName": operation.name,
            "variables": variables,
        });
        let auth = auth_header(token, credentials)?;
        self.with_retries(operation.name, operation.idempotent, || async {
            self.limiter.until_ready().await;
            self.attempt(&body, &auth, operation, credentials).await
        })
        .await
    }

    /// Runs `attempt` until it is done or failed, or its retries run out:
    /// a call is sent again only when idempotent or refused by the server,
    /// after `Retry-After` or a jittered backoff.
    async fn with_retries<F, Fut>(
        &self,
        operation: &str,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<Value, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Attempt>,
    {
        let mut attempts = 0;
        loop {
            match attempt().await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Failed(e) => return Err(e),
                Attempt::Retry {
                    after,
                    error,
                    refused,
                } => {
                    attempts += 1;
                    if attempts >= self.settings.attempts || !(idempotent || refused) {
                        return Err(CallError::Provider(error));
                    }
                    let wait =
                        after.unwrap_or_else(|| jittered(self.settings.backoff, attempts - 1));
                    debug!(operation, attempt = attempts, wait_ms = wait.as_millis() as u64, error = %error, "retrying Fly call");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        body: &Value,
        auth: &http::HeaderValue,
        operation: &Operation,
        credentials: &str,
    ) -> Attempt {
        let name = operation.name;
        let response = match self
            .http
            .post(&self.settings.graphql_url)
            .header(http::header::AUTHORIZATION, auth.clone())
            .json(body)
            .send()
            .await
        {
            Ok(r) => r,
            // reqwest's message names the URL, never a header.
            Err(e) => return unavailable(name, e),
        };
        let status = response.status();
        if let Some(outcome) = status_outcome(&response, FlyApiKind::Graphql, name, credentials) {
            return outcome;
        }
        let value: Value = match response.json().await {
            Ok(v) => v,
            Err(e) => return unavailable(name, format!("HTTP {status}, unreadable answer: {e}")),
        };
        let errors = parse_errors(&value);
        if errors
            .iter()
            .any(|e| e.code.as_deref() == Some("UNAUTHORIZED"))
            && value.get("data").is_none_or(Value::is_null)
        {
            // A request-level UNAUTHORIZED: the token itself was refused.
            return Attempt::Failed(credentials_rejected(name, credentials));
        }
        if let Some(e) = classify_errors(name, &errors, credentials) {
            return Attempt::Failed(e);
        }
        if !status.is_success() {
            return Attempt::Failed(CallError::Provider(ProviderError::terminal(
                reasons::UNEXPECTED_RESPONSE,
                format!("Fly {name}: HTTP {status}"),
            )));
        }
        match value.get("data") {
            Some(data) if !data.is_null() => Attempt::Done(data.clone()),
            _ => Attempt::Failed(CallError::Provider(ProviderError::terminal(
                reasons::UNEXPECTED_RESPONSE,
                format!("Fly {name}: answer without data"),
            ))),
        }
    }
    /// Runs one Machines REST call (`operation` is its OpenAPI
    /// `operationId`, for messages) and returns the parsed body (`Null` for
    /// an empty one). 404 is [`CallError::NotFound`]. Idempotent calls are
    /// retried on 5xx and connection errors with jittered backoff; every
    /// call is retried after a 429, and after a 503 that carries
    /// `Retry-After` (Managed Postgres answers so while a cluster is not
    /// ready: the request was not processed), honouring `Retry-After`.
    pub async fn rest(
        &self,
        token: &Secret,
        credentials: &str,
        call: Rest<'_>,
    ) -> Result<Value, CallError> {
        let Rest {
            method,
            path,
            query,
            body,
            operation,
            idempotent,
        } = call;
        let auth = auth_header(token, credentials)?;
        let mut url = format!(
            "{}{}",
            self.settings.machines_url.trim_end_matches('/'),
            path
        );
        for (i, (key, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&percent_encode(key));
            url.push('=');
            url.push_str(&percent_encode(value));
        }
        let bucket = format!("{operation} {}", rate_limit_target(path, query));
        // Full buckets of targets not called lately are forgotten.
        if self.per_target.len() > 10_000 {
            self.per_target.retain_recent();
            self.get_machine.retain_recent();
        }
        let per_target = if operation == "Machines_show" {
            &self.get_machine
        } else {
            &self.per_target
        };
        self.with_retries(operation, idempotent, || async {
            per_target.until_key_ready(&bucket).await;
            self.limiter.until_ready().await;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header(http::header::AUTHORIZATION, auth.clone());
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Err(e) => unavailable(operation, e),
                Ok(response) => rest_outcome(response, operation, credentials).await,
            }
        })
        .await
    }
}

/// A path segment or query value, percent-encoded (unreserved characters kept).
pub fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What one Machines REST answer comes to. Fly's error bodies are
/// `{error, status}`; their text names resources, never a credential.
async fn rest_outcome(response: reqwest::Response, operation: &str, credentials: &str) -> Attempt {
    let status = response.status();
    if let Some(outcome) = status_outcome(&response, FlyApiKind::Machines, operation, credentials) {
        return outcome;
    }
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) => {
            return unavailable(operation, format!("HTTP {status}, unreadable answer: {e}"));
        }
    };
    let value: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) if !status.is_success() => Value::Null,
            Err(e) => {
                return Attempt::Failed(CallError::Provider(ProviderError::terminal(
                    reasons::UNEXPECTED_RESPONSE,
                    format!("Fly {operation}: HTTP {status}, answer is not JSON: {e}"),
                )));
            }
        }
    };
    if status.is_success() {
        return Attempt::Done(value);
    }
    let said = value
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_string();
    if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        return Attempt::Failed(CallError::NotFound(format!("Fly {operation}: {said}")));
    }
    if status == StatusCode::CONFLICT {
        // Someone else's change in between: looking again resolves it.
        return Attempt::Failed(CallError::Provider(ProviderError::transient(
            reasons::PROVIDER_ERROR,
            format!("Fly {operation}: conflict: {said}"),
        )));
    }
    Attempt::Failed(CallError::Provider(ProviderError::terminal(
        reasons::REQUEST_REJECTED,
        format!("Fly {operation}: HTTP {status}: {said}"),
    )))
}

/// The `Authorization` header for `token`, marked sensitive so that no
/// debug output of a request shows it; a token that is not a valid header
/// value is reported by where it came from, never by any part of it.
fn auth_header(token: &Secret, credentials: &str) -> Result<http::HeaderValue, CallError> {
    let mut auth = http::HeaderValue::from_str(&authorization(token)).map_err(|_| {
        CallError::Provider(ProviderError::terminal(
            crate::reasons::CREDENTIALS_UNAVAILABLE,
            format!(
                "the Fly API token in {credentials} is not a valid HTTP header value \
                 (control characters?); put a valid Fly API token there"
            ),
        ))
    })?;
    auth.set_sensitive(true);
    Ok(auth)
}

/// Which of Fly's two APIs answered: they use statuses differently.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FlyApiKind {
    /// GraphQL: 401 is the token; refusals of one field come as `errors`.
    Graphql,
    /// Machines REST: 401 and 403 are the token; a 503 with `Retry-After`
    /// means the request was not processed (Managed Postgres not ready).
    Machines,
}

/// What an answer's status alone says, before its body is read: the
/// credentials refused, rate limited (refused by the server, so any call
/// may be sent again), or a server error; `None` for any other status.
fn status_outcome(
    response: &reqwest::Response,
    api: FlyApiKind,
    operation: &str,
    credentials: &str,
) -> Option<Attempt> {
    let status = response.status();
    let after = retry_after(response.headers());
    let token_refused = status == StatusCode::UNAUTHORIZED
        || (api == FlyApiKind::Machines && status == StatusCode::FORBIDDEN);
    if token_refused {
        return Some(Attempt::Failed(credentials_rejected(
            operation,
            credentials,
        )));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Some(Attempt::Retry {
            after: after.or(Some(Duration::from_secs(1))),
            error: ProviderError::transient(
                reasons::RATE_LIMITED,
                format!("Fly {operation}: rate limited (HTTP 429)"),
            ),
            refused: true,
        });
    }
    if status.is_server_error() {
        let refused = api == FlyApiKind::Machines
            && status == StatusCode::SERVICE_UNAVAILABLE
            && after.is_some();
        return Some(Attempt::Retry {
            after,
            error: ProviderError::unavailable(format!("Fly {operation}: HTTP {status}")),
            refused,
        });
    }
    None
}

/// A call that got no usable answer (connection error, unreadable body):
/// retried where the call allows it, after backoff.
fn unavailable(operation: &str, detail: impl std::fmt::Display) -> Attempt {
    Attempt::Retry {
        after: None,
        error: ProviderError::unavailable(format!("Fly {operation}: {detail}")),
        refused: false,
    }
}

fn credentials_rejected(operation: &str, credentials: &str) -> CallError {
    CallError::Provider(ProviderError::terminal(
        reasons::CREDENTIALS_REJECTED,
        format!(
            "Fly refused the credentials in {credentials} ({operation}: unauthorized); \
             put a valid Fly API token there"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per status rule: what each API's answer status alone means
    /// (`None`: read the body).
    #[test]
    fn statuses_mean_what_each_fly_api_means_by_them() {
        use FlyApiKind::{Graphql, Machines};
        let outcome = |api, status: u16, retry_after: Option<&str>| {
            let mut answer = http::Response::builder().status(status);
            if let Some(after) = retry_after {
                answer = answer.header(http::header::RETRY_AFTER, after);
            }
            let response = reqwest::Response::from(answer.body("").expect("response"));
            match status_outcome(&response, api, "Op", "ns/creds") {
                None => "read body".to_string(),
                Some(Attempt::Done(_)) => "done".to_string(),
                Some(Attempt::Failed(e)) => format!("failed {}", ProviderError::from(e).reason()),
                Some(Attempt::Retry { after, refused, .. }) => {
                    format!("retry after={after:?} refused={refused}")
                }
            }
        };
        let rows = [
            (Graphql, 200, None, "read body"),
            (Graphql, 401, None, "failed CredentialsRejected"),
            (Graphql, 403, None, "read body"),
            (Machines, 403, None, "failed CredentialsRejected"),
            (Machines, 404, None, "read body"),
            (Graphql, 429, None, "retry after=Some(1s) refused=true"),
            (
                Machines,
                429,
                Some("7"),
                "retry after=Some(7s) refused=true",
            ),
            (
                Graphql,
                503,
                Some("2"),
                "retry after=Some(2s) refused=false",
            ),
            (
                Machines,
                503,
                Some("2"),
                "retry after=Some(2s) refused=true",
            ),
            (Machines, 503, None, "retry after=None refused=false"),
            (
                Machines,
                500,
                Some("2"),
                "retry after=Some(2s) refused=false",
            ),
        ];
        for (api, status, after, expected) in rows {
            assert_eq!(outcome(api, status, after), expected, "{status} {after:?}");
        }
    }

    #[test]
    fn calls_are_limited_per_machine_app_cluster_or_organization_as_fly_counts_them() {
        assert_eq!(
            rate_limit_target("/v1/apps/db-stage/machines/m1/start", &[]),
            "machine=m1"
        );
        assert_eq!(
            rate_limit_target("/v1/apps/db-stage/volumes", &[]),
            "app=db-stage"
        );
        assert_eq!(
            rate_limit_target("/v1/postgres/c9/users", &[]),
            "cluster=c9"
        );
        assert_eq!(
            rate_limit_target("/v1/postgres", &[("org_slug", "acme")]),
            "org=acme"
        );
        assert_eq!(rate_limit_target("/v1/apps", &[]), "");
    }

    #[test]
    fn macaroons_go_as_flyv1_and_user_tokens_as_bearer() {
        assert_eq!(authorization(&Secret::new("fm2_abc")), "FlyV1 fm2_abc");
        assert_eq!(authorization(&Secret::new("fm1r_abc")), "FlyV1 fm1r_abc");
        assert_eq!(authorization(&Secret::new("fm1a_abc")), "FlyV1 fm1a_abc");
        assert_eq!(
            authorization(&Secret::new("FlyV1 fm2_a,fm2_b")),
            "FlyV1 fm2_a,fm2_b"
        );
        assert_eq!(
            authorization(&Secret::new(" user-token\n")),
            "Bearer user-token"
        );
    }

    #[test]
    fn graphql_errors_map_to_categories_with_camel_case_reasons() {
        let e = |code: &str| GraphqlError {
            message: "boom".into(),
            code: Some(code.into()),
        };
        let reason =
            |code: &str| match classify_errors("op", &[e(code)], "Secret ns/creds key token") {
                Some(CallError::Provider(p)) => (p.reason(), p.is_terminal()),
                Some(CallError::NotFound(_)) => ("NotFound", false),
                None => ("none", false),
            };
        assert_eq!(reason("NOT_FOUND"), ("NotFound", false));
        assert_eq!(reason("UNAUTHORIZED"), (reasons::PERMISSION_DENIED, true));
        assert_eq!(reason("VALIDATION"), (reasons::REQUEST_REJECTED, true));
        assert_eq!(
            reason("GRAPHQL_VALIDATION_FAILED"),
            (reasons::UNEXPECTED_RESPONSE, true)
        );
        assert_eq!(reason("SOMETHING"), (reasons::PROVIDER_ERROR, false));
        assert!(classify_errors("op", &[], "x").is_none());
    }

    /// The provider error an organization lookup with `token` ends in.
    async fn organization_lookup_error(
        api: &FlyApi,
        token: &str,
        credentials: &str,
    ) -> ProviderError {
        let e = api
            .graphql(
                &Secret::new(token),
                &operations::ORGANIZATION,
                json!({ "slug": "x" }),
                credentials,
            )
            .await
            .expect_err("the lookup fails");
        let CallError::Provider(e) = e else {
            panic!("not a provider error")
        };
        e
    }

    #[tokio::test]
    async fn a_token_that_is_no_header_value_is_reported_without_any_of_it() {
        let (server, api) = faulty_emulator(json!({})).await;
        let e = organization_lookup_error(
            &api,
            "fm2_secretpart\nrest",
            "Secret bulkhead-system/fly key token",
        )
        .await;
        assert_eq!(e.reason(), crate::reasons::CREDENTIALS_UNAVAILABLE);
        let message = e.to_string();
        assert!(
            message.contains("Secret bulkhead-system/fly key token"),
            "{message}"
        );
        assert!(
            !message.contains("secretpart") && !message.contains("rest"),
            "{message}"
        );
        assert_eq!(graphql_requests(&server), 0, "nothing was sent");
        server.shutdown().await;
    }

    #[test]
    fn rejected_credentials_name_the_secret_not_the_token() {
        let CallError::Provider(e) =
            credentials_rejected("organization", "Secret ns/fly key token")
        else {
            panic!("not a provider error");
        };
        assert_eq!(e.reason(), "CredentialsRejected");
        assert!(e.is_terminal());
        assert!(e.to_string().contains("Secret ns/fly key token"), "{e}");
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("2"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("3600"),
        );
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
    }

    /// The emulator in process, answering every GraphQL call with `fault`.
    async fn faulty_emulator(fault: Value) -> (fly_emulator::Server, Arc<FlyApi>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = fly_emulator::serve(
            fly_emulator::Config {
                admin_token: "admin".into(),
                ..fly_emulator::Config::default()
            },
            listener,
        )
        .await
        .expect("emulator");
        let rules: fly_emulator::control::FaultConfig =
            serde_json::from_value(json!({ "rules": [fault] })).expect("fault rules");
        server.emulator.faults.lock().expect("faults").config = rules;
        let api = FlyApi::new(FlySettings {
            graphql_url: format!("{}/graphql", server.url()),
            attempts: 3,
            backoff: Duration::from_millis(10),
            ..FlySettings::default()
        })
        .expect("client");
        (server, api)
    }

    fn graphql_requests(server: &fly_emulator::Server) -> u64 {
        let counters = server.emulator.counters.lock().expect("counters");
        counters
            .requests_by_path
            .get("/graphql")
            .copied()
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_429_is_retried_after_retry_after_and_given_up_after_the_attempts() {
        let (server, api) =
            faulty_emulator(json!({ "rate_limit_fraction": 1.0, "retry_after_secs": 1 })).await;
        let started = std::time::Instant::now();
        let e = organization_lookup_error(&api, "admin", "creds").await;
        assert_eq!(e.reason(), reasons::RATE_LIMITED);
        assert_eq!(graphql_requests(&server), 3, "one request per attempt");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "waited Retry-After twice"
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_5xx_is_retried_for_queries_and_not_for_mutations() {
        let (server, api) =
            faulty_emulator(json!({ "error_fraction": 1.0, "error_status": 503 })).await;
        let token = Secret::new("admin");
        let e = api
            .graphql(
                &token,
                &operations::ORGANIZATION,
                json!({ "slug": "x" }),
                "creds",
            )
            .await
            .expect_err("always 503");
        assert!(matches!(
            e,
            CallError::Provider(ProviderError::Unavailable { .. })
        ));
        assert_eq!(graphql_requests(&server), 3, "the query was retried");
        let vars = json!({ "org": "o", "email": "a@b.c" });
        let _ = api
            .graphql(&token, &operations::CREATE_INVITATION, vars, "creds")
            .await
            .expect_err("always 503");
        assert_eq!(graphql_requests(&server), 4, "the mutation was sent once");
        server.shutdown().await;
    }

    #[test]
    fn backoff_doubles_with_at_most_as_much_jitter() {
        for attempt in 0..4 {
            let base = Duration::from_millis(100) * (1 << attempt);
            let wait = jittered(Duration::from_millis(100), attempt);
            assert!(wait >= base && wait <= base * 2, "{attempt}: {wait:?}");
        }
    }
}
