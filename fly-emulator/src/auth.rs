//! Who a request is: the bootstrap user (Bearer token from the command
//! line) or a token minted by `createLimitedAccessToken` / `deploy_token`
//! (`FlyV1 fm2_…`), and what each may reach.

use chrono::{DateTime, Utc};
use http::HeaderMap;

use crate::state::{App, Role, State, TokenScope};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user token: reaches the organizations the user is a member of.
    User { user_id: String },
    /// A `deploy_organization` token: that organization only.
    OrgToken { token_id: String, org_id: String },
    /// A `deploy` token: that one app only.
    AppToken {
        token_id: String,
        org_id: String,
        app_name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
}

/// The scheme of an Authorization header, the only part of it that is ever
/// logged.
pub fn auth_scheme(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let scheme = value.split_whitespace().next()?;
    match scheme {
        "FlyV1" | "Bearer" => Some(scheme.to_string()),
        _ => Some("other".to_string()),
    }
}

pub fn authenticate(
    headers: &HeaderMap,
    admin_token: &str,
    state: &State,
    now: DateTime<Utc>,
) -> Result<Principal, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    let (scheme, credentials) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let credentials = credentials.trim();
    match scheme {
        "Bearer" => {
            if !admin_token.is_empty() && credentials == admin_token {
                return Ok(Principal::User {
                    user_id: state.admin_user_id.clone(),
                });
            }
            // flyctl also sends macaroons as Bearer; Fly accepts that.
            minted(credentials, state, now)
        }
        "FlyV1" => minted(credentials, state, now),
        _ => Err(AuthError::Malformed),
    }
}

/// A FlyV1 header may carry several comma-separated macaroons (a token
/// and its discharges); the emulator's tokens are single, so the first one
/// decides and any other must be known too.
fn minted(credentials: &str, state: &State, now: DateTime<Utc>) -> Result<Principal, AuthError> {
    let mut principal = None;
    for secret in credentials.split(',').map(str::trim) {
        let token = state
            .tokens
            .iter()
            .find(|t| t.secret == secret)
            .ok_or(AuthError::Unknown)?;
        if token.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if token.expires_at <= now {
            return Err(AuthError::Expired);
        }
        if principal.is_none() {
            principal = Some(match &token.scope {
                TokenScope::Organization => Principal::OrgToken {
                    token_id: token.id.clone(),
                    org_id: token.org_id.clone(),
                },
                TokenScope::App { app_name } => Principal::AppToken {
                    token_id: token.id.clone(),
                    org_id: token.org_id.clone(),
                    app_name: app_name.clone(),
                },
            });
        }
    }
    principal.ok_or(AuthError::Malformed)
}

impl Principal {
    /// May list and create apps, volumes and the like in this organization.
    pub fn can_use_org(&self, state: &State, org_id: &str) -> bool {
        match self {
            Principal::User { user_id } => state
                .organizations
                .get(org_id)
                .is_some_and(|o| o.membership(user_id).is_some()),
            Principal::OrgToken { org_id: own, .. } => own == org_id,
            Principal::AppToken { .. } => false,
        }
    }

    /// May manage members, invitations, tokens and the organization itself.
    pub fn is_org_admin(&self, state: &State, org_id: &str) -> bool {
        match self {
            Principal::User { user_id } => state
                .organizations
                .get(org_id)
                .and_then(|o| o.membership(user_id))
                .is_some_and(|m| m.role == Role::Admin),
            _ => false,
        }
    }

    pub fn can_use_app(&self, state: &State, app: &App) -> bool {
        match self {
            Principal::AppToken { app_name, .. } => *app_name == app.name,
            _ => self.can_use_org(state, &app.org_id),
        }
    }

    pub fn user_id(&self, state: &State) -> String {
        match self {
            Principal::User { user_id } => user_id.clone(),
            Principal::OrgToken { token_id, .. } | Principal::AppToken { token_id, .. } => state
                .tokens
                .iter()
                .find(|t| t.id == *token_id)
                .map(|t| t.user_id.clone())
                .unwrap_or_default(),
        }
    }

    pub fn token_id(&self) -> Option<&str> {
        match self {
            Principal::User { .. } => None,
            Principal::OrgToken { token_id, .. } | Principal::AppToken { token_id, .. } => {
                Some(token_id)
            }
        }
    }
}

/// Go's `time.ParseDuration` for the `expiry` argument: a sequence of
/// decimal numbers with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`.
pub fn parse_go_duration(text: &str) -> Option<chrono::Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text == "0" {
        return Some(chrono::Duration::zero());
    }
    let mut rest = text;
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_nanos += number * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > i64::MAX as f64 {
        return None;
    }
    Some(chrono::Duration::nanoseconds(total_nanos as i64))
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration;

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("1h30m"),
            Some(chrono::Duration::minutes(90))
        );
        assert_eq!(
            parse_go_duration("720h"),
            Some(chrono::Duration::hours(720))
        );
        assert_eq!(
            parse_go_duration("1.5s"),
            Some(chrono::Duration::milliseconds(1500))
        );
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
