//! The emulator's in-memory world: users, organizations, tokens, apps and
//! Managed Postgres clusters. Everything the two APIs answer is read from
//! here, and `GET /_emulator/state` serializes it whole (token secrets are
//! skipped so a dumped state never carries a credential).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OrgType {
    #[serde(rename = "PERSONAL")]
    Personal,
    #[serde(rename = "SHARED")]
    Shared,
}

impl OrgType {
    pub fn as_graphql(self) -> &'static str {
        match self {
            OrgType::Personal => "PERSONAL",
            OrgType::Shared => "SHARED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    #[serde(rename = "ADMIN")]
    Admin,
    #[serde(rename = "MEMBER")]
    Member,
}

impl Role {
    pub fn as_graphql(self) -> &'static str {
        match self {
            Role::Admin => "ADMIN",
            Role::Member => "MEMBER",
        }
    }

    pub fn from_graphql(value: &str) -> Option<Role> {
        match value {
            "ADMIN" => Some(Role::Admin),
            "MEMBER" => Some(Role::Member),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    pub user_id: String,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Invitation {
    pub id: String,
    pub email: String,
    pub inviter_id: String,
    pub created_at: DateTime<Utc>,
    pub redeemed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Organization {
    pub id: String,
    pub internal_numeric_id: i64,
    pub slug: String,
    pub name: String,
    pub org_type: OrgType,
    pub created_at: DateTime<Utc>,
    pub members: Vec<Membership>,
    pub invitations: Vec<Invitation>,
}

impl Organization {
    pub fn membership(&self, user_id: &str) -> Option<&Membership> {
        self.members.iter().find(|m| m.user_id == user_id)
    }
}

/// What a minted token may reach: a whole organization, or one app in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenScope {
    Organization,
    App { app_name: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Token {
    pub id: String,
    pub name: String,
    /// The `fm2_…` secret; never serialized, so neither the state dump nor
    /// a log line can carry it.
    #[serde(skip)]
    pub secret: String,
    pub org_id: String,
    pub user_id: String,
    pub profile: String,
    pub profile_params: Value,
    pub scope: TokenScope,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Secret {
    /// Secret values are test data the client chose; the dump shows only
    /// the digest so they do not spread into test output.
    #[serde(skip)]
    pub value: String,
    pub digest: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IpAssignment {
    pub ip: String,
    pub ip_type: String,
    pub region: String,
    pub service_name: String,
    pub network: Option<String>,
    pub org_slug: String,
    pub shared: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub region: String,
    pub zone: String,
    pub size_gb: i64,
    pub encrypted: bool,
    pub require_unique_zone: bool,
    pub fstype: String,
    pub auto_backup_enabled: bool,
    pub snapshot_retention: i64,
    pub state: String,
    pub attached_machine_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub id: String,
    pub name: String,
    pub region: String,
    pub state: String,
    pub config: Value,
    pub private_ip: String,
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct App {
    pub id: String,
    pub internal_numeric_id: i64,
    pub name: String,
    pub org_id: String,
    /// Fixed at creation: Fly has no call that moves an app to another
    /// network.
    pub network: String,
    pub app_role_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub secrets: BTreeMap<String, Secret>,
    pub secrets_version: i64,
    pub ips: Vec<IpAssignment>,
    pub volumes: BTreeMap<String, Volume>,
    pub machines: BTreeMap<String, Machine>,
    pub consul_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresUser {
    pub role: String,
    #[serde(skip)]
    pub password: String,
    /// How many times its password was rotated, so a test can watch for a
    /// rotation in the state dump without reading the credentials.
    pub rotations: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresCluster {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub plan: String,
    pub region: String,
    pub pg_major_version: String,
    pub disk_size_gb: i64,
    pub pool_mode: String,
    pub postgis_enabled: bool,
    pub created_at: DateTime<Utc>,
    /// Create is asynchronous: the cluster answers `creating` until then.
    pub ready_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub databases: Vec<String>,
    pub users: BTreeMap<String, PostgresUser>,
}

impl PostgresCluster {
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.deleted_at.is_some() {
            "deleted"
        } else if now >= self.ready_at {
            "ready"
        } else {
            "creating"
        }
    }
}

/// An SSH certificate `issueCertificate` signed (its fingerprint and
/// digest, never a key).
#[derive(Debug, Clone, Serialize)]
pub struct SshCertificate {
    pub serial: u64,
    pub org_id: String,
    pub principals: Vec<String>,
    pub app_names: Vec<String>,
    /// SHA256 fingerprint of the certified public key.
    pub key_fingerprint: String,
    /// The certificate's digest, as an app secret holding it shows.
    pub digest: String,
    pub valid_before: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize)]
pub struct State {
    pub users: BTreeMap<String, User>,
    pub organizations: BTreeMap<String, Organization>,
    pub tokens: Vec<Token>,
    pub apps: BTreeMap<String, App>,
    pub postgres_clusters: BTreeMap<String, PostgresCluster>,
    pub ssh_certificates: Vec<SshCertificate>,
    /// Each organization's SSH certificate authority, made on first use;
    /// never serialized.
    #[serde(skip)]
    pub ssh_authorities: BTreeMap<String, ssh_key::PrivateKey>,
    /// The user the bootstrap token authenticates as.
    pub admin_user_id: String,
    pub next_numeric_id: i64,
}

impl State {
    pub fn next_numeric_id(&mut self) -> i64 {
        self.next_numeric_id += 1;
        self.next_numeric_id
    }

    pub fn org_by_slug(&self, slug: &str) -> Option<&Organization> {
        self.organizations.values().find(|o| o.slug == slug)
    }

    pub fn org_by_slug_mut(&mut self, slug: &str) -> Option<&mut Organization> {
        self.organizations.values_mut().find(|o| o.slug == slug)
    }

    /// The personal organization of a user (`"personal"` is accepted as an
    /// alias of its slug, as Fly does).
    pub fn personal_org_of(&self, user_id: &str) -> Option<&Organization> {
        self.organizations.values().find(|o| {
            o.org_type == OrgType::Personal
                && o.members.first().is_some_and(|m| m.user_id == user_id)
        })
    }

    pub fn user_by_email(&self, email: &str) -> Option<&User> {
        self.users.values().find(|u| u.email == email)
    }
}
