//! Starts the emulator on 127.0.0.1:0 and talks to it over real HTTP.

#![allow(dead_code)]

use std::time::Duration;

use fly_emulator::control::RateLimitSettings;
use fly_emulator::{Config, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "test-admin-token-3f9a";

/// Every GraphQL operation the tests send; `graphql_operations.rs` checks
/// each one validates against Fly's schema.
pub mod ops {
    pub const CREATE_ORG: &str = "mutation CreateOrg($name: String!) {
  createOrganization(input: {name: $name}) {
    organization { id slug name type }
    token
  }
}";

    pub const ORG_BY_SLUG: &str = "query OrgBySlug($slug: String!) {
  organization(slug: $slug) {
    id
    slug
    name
    type
    members { totalCount edges { role node { id email } } }
    invitations { nodes { id email redeemed } }
  }
}";

    /// Aliases, `__typename`, a named fragment, an inline fragment and a
    /// variable with a default, to exercise the projection.
    pub const ORG_SHAPES: &str =
        "query OrgShapes($slug: String = \"personal\", $withMembers: Boolean!) {
  org: organization(slug: $slug) {
    __typename
    ...OrgFields
    ... on Organization { kind: type }
    people: members @include(if: $withMembers) { count: totalCount }
  }
}
fragment OrgFields on Organization { orgId: id slug }";

    pub const ORG_BY_ID: &str = "query OrgById($id: ID!) { organization(id: $id) { id slug } }";

    pub const INVITE: &str = "mutation Invite($org: ID!, $email: String!) {
  createOrganizationInvitation(input: {organizationId: $org, email: $email}) {
    invitation { id email redeemed organization { slug } }
  }
}";

    pub const DELETE_INVITATION: &str = "mutation DeleteInvitation($id: ID!) {
  deleteOrganizationInvitation(input: {invitationId: $id}) { organization { id } }
}";

    pub const SET_ROLE: &str =
        "mutation SetRole($org: ID!, $user: ID!, $role: OrganizationMemberRole!) {
  updateOrganizationMembership(input: {organizationId: $org, userId: $user, role: $role}) {
    organization { members { edges { role node { id email } } } }
    user { id email }
  }
}";

    pub const REMOVE_MEMBER: &str = "mutation RemoveMember($org: ID!, $user: ID!) {
  deleteOrganizationMembership(input: {organizationId: $org, userId: $user}) {
    organization { members { totalCount edges { node { id } } } }
    user { id }
  }
}";

    pub const DELETE_ORG: &str = "mutation DeleteOrg($id: ID!) {
  deleteOrganization(input: {organizationId: $id}) { deletedOrganizationId }
}";

    pub const CREATE_TOKEN: &str = "mutation CreateToken($org: ID!, $name: String!, $profile: String!, $params: JSON, $expiry: String) {
  createLimitedAccessToken(input: {organizationId: $org, name: $name, profile: $profile, profileParams: $params, expiry: $expiry}) {
    limitedAccessToken { id token tokenHeader expiresAt profile }
  }
}";

    pub const DELETE_TOKEN: &str = "mutation DeleteToken($id: ID, $token: String) {
  deleteLimitedAccessToken(input: {id: $id, token: $token}) { token }
}";

    pub const LATEST_IMAGE: &str =
        "query Latest($repo: String!) { latestImageTag(repository: $repo) }";

    pub const ENABLE_CONSUL: &str = "mutation Consul($app: ID!) {
  enablePostgresConsul(input: {appId: $app}) { consulUrl }
}";

    pub const ISSUE_CERT: &str = "mutation IssueCert($org: ID!, $principals: [String!], $apps: [String!], $key: String) {
  issueCertificate(input: {organizationId: $org, principals: $principals, appNames: $apps, publicKey: $key}) { certificate key }
}";

    pub const ORG_TOKENS: &str = "query OrgTokens($slug: String!) {
  organization(slug: $slug) { limitedAccessTokens { totalCount nodes { id name profile } } }
}";

    pub const VIEWER: &str = "query Viewer { viewer { id email } }";

    pub const ALL: &[(&str, &str)] = &[
        ("VIEWER", VIEWER),
        ("CREATE_ORG", CREATE_ORG),
        ("ORG_BY_SLUG", ORG_BY_SLUG),
        ("ORG_SHAPES", ORG_SHAPES),
        ("ORG_BY_ID", ORG_BY_ID),
        ("INVITE", INVITE),
        ("DELETE_INVITATION", DELETE_INVITATION),
        ("SET_ROLE", SET_ROLE),
        ("REMOVE_MEMBER", REMOVE_MEMBER),
        ("DELETE_ORG", DELETE_ORG),
        ("CREATE_TOKEN", CREATE_TOKEN),
        ("DELETE_TOKEN", DELETE_TOKEN),
        ("LATEST_IMAGE", LATEST_IMAGE),
        ("ENABLE_CONSUL", ENABLE_CONSUL),
        ("ISSUE_CERT", ISSUE_CERT),
        ("ORG_TOKENS", ORG_TOKENS),
    ];
}

pub fn config() -> Config {
    Config {
        admin_token: ADMIN_TOKEN.into(),
        seed: 42,
        // Most tests send bursts that Fly's real limits would refuse; the
        // rate-limit test turns them back on.
        rate_limits: RateLimitSettings {
            enabled: false,
            scale: 1.0,
        },
        postgres_ready_after: Duration::from_millis(600),
        ..Config::default()
    }
}

pub struct Emu {
    pub server: Server,
    pub http: reqwest::Client,
    pub base: String,
}

pub async fn start(config: Config) -> Emu {
    // reqwest is built without a default TLS provider; the client wants
    // one even though the tests only speak plain HTTP to 127.0.0.1.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let server = fly_emulator::serve(config, listener)
        .await
        .expect("emulator starts");
    let base = server.url();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("reqwest client");
    Emu { server, http, base }
}

pub fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

impl Emu {
    /// GraphQL request; `auth` is a whole Authorization header value.
    pub async fn gql(
        &self,
        auth: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.base))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        let resp = req.send().await.expect("graphql request");
        let status = resp.status();
        (status, resp.json().await.expect("graphql JSON"))
    }

    /// GraphQL as the admin, asserting no errors.
    pub async fn gql_ok(&self, query: &str, variables: Value) -> Value {
        let (status, body) = self.gql(Some(&bearer()), query, variables).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    pub async fn rest(
        &self,
        auth: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("REST request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("REST body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, value)
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self.rest(Some(&bearer()), method, path, body).await;
        (status, value)
    }

    pub async fn control(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self
            .rest(None, method, &format!("/_emulator{path}"), body)
            .await;
        (status, value)
    }

    /// Creates a shared organization, returning (id, slug).
    pub async fn create_org(&self, name: &str) -> (String, String) {
        let data = self.gql_ok(ops::CREATE_ORG, json!({"name": name})).await;
        let org = &data["createOrganization"]["organization"];
        (
            org["id"].as_str().expect("org id").to_string(),
            org["slug"].as_str().expect("org slug").to_string(),
        )
    }

    pub async fn create_app(&self, name: &str, org_slug: &str) {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/apps",
                Some(json!({"name": name, "org_slug": org_slug, "network": format!("{name}-net")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// GraphQL with `auth`, asserting the first error's code; returns the
    /// status and the whole body.
    pub async fn gql_error(
        &self,
        auth: &str,
        query: &str,
        variables: Value,
        code: &str,
    ) -> (StatusCode, Value) {
        let (status, body) = self.gql(Some(auth), query, variables).await;
        assert_eq!(error_code(&body), Some(code), "{body}");
        (status, body)
    }

    /// GraphQL as the admin, asserting the first error's code.
    pub async fn admin_gql_error(&self, query: &str, variables: Value, code: &str) -> Value {
        let (_, body) = self.gql_error(&bearer(), query, variables, code).await;
        body
    }

    /// REST call asserting the status; returns the headers and the body.
    pub async fn rest_expect(
        &self,
        auth: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> (reqwest::header::HeaderMap, Value) {
        let (status, headers, value) = self.rest(auth, method, path, body).await;
        assert_eq!(status, expected, "{path}: {value}");
        (headers, value)
    }

    /// GET with a whole Authorization header value, asserting the status.
    pub async fn get_as(&self, auth: &str, path: &str, expected: StatusCode) -> Value {
        let (_, value) = self
            .rest_expect(Some(auth), Method::GET, path, None, expected)
            .await;
        value
    }

    /// GET as the admin, asserting the status; returns the body.
    pub async fn get(&self, path: &str, expected: StatusCode) -> Value {
        let (_, value) = self
            .rest_expect(Some(&bearer()), Method::GET, path, None, expected)
            .await;
        value
    }

    /// POST as the admin, asserting the status; returns the body.
    pub async fn post(&self, path: &str, body: Value, expected: StatusCode) -> Value {
        let (_, value) = self
            .rest_expect(Some(&bearer()), Method::POST, path, Some(body), expected)
            .await;
        value
    }

    /// DELETE as the admin, asserting the status.
    pub async fn delete(&self, path: &str, expected: StatusCode) {
        self.rest_expect(Some(&bearer()), Method::DELETE, path, None, expected)
            .await;
    }

    /// Control API call, asserting the status; returns the body.
    pub async fn control_expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> Value {
        let (status, value) = self.control(method, path, body).await;
        assert_eq!(status, expected, "{path}: {value}");
        value
    }

    /// Invites `email` to the organization, returning the invitation.
    pub async fn invite(&self, org_id: &str, email: &str) -> Value {
        let data = self
            .gql_ok(ops::INVITE, json!({"org": org_id, "email": email}))
            .await;
        data["createOrganizationInvitation"]["invitation"].clone()
    }

    /// Accepts an invitation through the control API, returning the
    /// invitee's user ID.
    pub async fn accept_invitation(&self, invitation_id: &str) -> String {
        let path = format!("/invitations/{invitation_id}/accept");
        let accepted = self
            .control_expect(Method::POST, &path, None, StatusCode::OK)
            .await;
        string(&accepted["user"]["id"], "user id")
    }
}

/// A JSON string's value, panicking with `what` when it is not one.
pub fn string(value: &Value, what: &str) -> String {
    value.as_str().expect(what).to_string()
}

/// Asserts a REST error body's `error` message contains `text`.
pub fn assert_error_mentions(body: &Value, text: &str) {
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains(text)),
        "{body}"
    );
}

/// The first error's `extensions.code`.
pub fn error_code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}
