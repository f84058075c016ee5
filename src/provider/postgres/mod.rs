//! Shared-server PostgreSQL backend: a DatabaseCluster is a tenancy on an
//! existing server, reached through the admin connection in a Secret.
//!
//! # Names
//! Several clusters share one server, so every physical name carries the
//! cluster's prefix: `external_name` with '-' replaced by '_'
//! (`my-app-db-stage` → `my_app_db_stage`). Database `main` is
//! `<prefix>_main`, user `app` is the login role `<prefix>_app`, and the
//! NOLOGIN group role `<prefix>_owner` owns the cluster's databases. A name
//! over 63 bytes fails with `NameTooLong` (PostgreSQL would truncate it
//! silently); identifiers are always quoted, never interpolated.
//!
//! # Ownership
//! Every role and database bulkhead creates carries the comment
//! `bulkhead.dev/owner=<namespace>/<name> uid=<uid>`. Before touching an
//! existing object bulkhead checks it: another cluster's marker, or no marker
//! at all, fails with `NameConflict` before anything is written, so a cluster
//! can neither hijack an unmanaged object nor grant itself access to a
//! database it does not own. The match is on namespace/name; a different uid
//! (the object re-created after an Orphan delete) adopts and rewrites the
//! marker. A database without a comment, under the cluster's own name and
//! owned by one of its marked roles, is a create that crashed between CREATE
//! DATABASE and COMMENT, and is adopted too.
//!
//! # Privileges (least privilege)
//! - Login roles are NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
//!   NOBYPASSRLS with the user's CONNECTION LIMIT; passwords are sent as
//!   SCRAM-SHA-256 verifiers computed here.
//! - Databases: PUBLIC loses CONNECT/TEMPORARY; each user listed for a
//!   database gets CONNECT on it, nobody else. PUBLIC loses CREATE on schema
//!   `public`.
//! - `readOnly`: USAGE on the database's schemas, SELECT on its tables and
//!   views; `readWrite`: also INSERT/UPDATE/DELETE and USAGE/SELECT/UPDATE on
//!   sequences. Both also as default privileges FOR ROLE the database's
//!   owner role, so tables created later follow. No TRUNCATE, REFERENCES,
//!   TRIGGER, CREATE.
//! - `owner`: member of the database's owner role, and `ALTER ROLE … IN
//!   DATABASE … SET role` to it, so what it creates belongs to the owner role
//!   (other owners can alter it, default privileges apply). For databases
//!   without an explicit owner that role is `<prefix>_owner`, which owns all
//!   of them: `owner` on one such database is ownership of all of them (never
//!   of another cluster's). To scope ownership to one database, name an
//!   explicit `databases[].owner`: that user's own login role then owns the
//!   database (and gets no membership in `<prefix>_owner`); other `owner`
//!   users of that database become members of that user's role.
//! - Grants nobody declared (on the database, memberships from outside the
//!   cluster, extra table privileges) are revoked by `update`.
//!
//! # Connections and what an observe costs
//! Admin sessions are pooled per server, admin credentials, TLS settings
//! and database (see `pool`: at most 4 on the maintenance database and 2
//! on each other one, closed after 10 minutes idle, a session that failed
//! is never reused), shared by every provider parsed from the same
//! connection string. An observe of a cluster with D databases and U users
//! in steady state opens no connection and runs, on the server:
//! - on the admin session: 2 catalog queries (server facts with the
//!   cluster's databases, owners, markers and ACLs; the cluster's roles with
//!   attributes, markers, memberships, per-database settings and, when the
//!   admin role may read `pg_authid`, password verifiers);
//! - on a session in each of the D databases: 1 query (schemas, relations,
//!   their grants, default privileges; these live in each database's own
//!   catalogs);
//! - plus, per session taken from a pool, an empty query checking it is
//!   alive: 2 + 2·D statements in all, none of them per user.
//!
//! Passwords (see `passwords`) are checked against the stored SCRAM
//! verifier offline when the admin role may read it (superuser); the
//! PBKDF2 work is redone only when the stored verifier or the desired
//! password changed, so `ALTER ROLE … PASSWORD` behind bulkhead's back is
//! found at the next observe. Without that right, bulkhead logs in as a
//! user only after it set the password, when the desired one changed, or
//! once an hour ([`LOGIN_RECHECK`]), so such drift is found within an hour
//! and one resync.
//!
//! # Copies
//! `copy_from` recreates the source's schema in the target's databases and
//! streams the rows through the sanitize masks (see `copy`). The source may
//! live on another server (`CopyRequest::source_connection`, its admin
//! connection string). A Sanitized copy is refused with
//! `SensitiveColumnsUnmasked` while a column that looks sensitive by name or
//! type (see `classify`) would be copied unmasked and the source has not
//! declared it safe (or allowed unmasked copies).

mod catalog;
mod classify;
pub mod conn;
mod converge;
mod copy;
pub mod names;
mod passwords;
mod pool;
mod sql;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use tokio_postgres::error::SqlState;

use crate::api::database_cluster::Endpoint;
use crate::provider::{
    CopyReport, CopyRequest, DatabaseClusterClient, DesiredDatabaseCluster, ExternalClient,
    Observation, Observed, ObservedDatabaseCluster, ProviderError, Readiness,
};
use crate::reasons;

use catalog::{Claim, DbInspection, Inventory};
use conn::{ConnInfo, ConnectFailure, classify};
use converge::{
    Fix, apply, db_fixes, drop_databases, drop_roles, grant_fixes, object_fixes, verifier,
    verifier_clause,
};
pub use copy::{TableRef, parse_column, parse_table};
pub use names::{MARKER_PREFIX, MAX_IDENTIFIER_BYTES};
use names::{Plan, UserPlan};
pub use passwords::LOGIN_RECHECK;
use passwords::Verdict;
use pool::Session;
pub use pool::{ADMIN_POOL_SIZE, DATABASE_POOL_SIZE, IDLE_TIMEOUT};
use sql::ident;

/// Where and as whom an application connects (no password: the reconciler
/// holds it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionDetails {
    pub host: String,
    pub port: u16,
    /// The physical login role, `<prefix>_<user>`.
    pub username: String,
    /// The physical database, `<prefix>_<db>`, if the user has one.
    pub database: Option<String>,
    /// The admin connection's sslmode, for the application's URI.
    pub sslmode: &'static str,
}

/// DatabaseClusters as tenancies on one shared PostgreSQL server.
#[derive(Clone, Debug)]
pub struct PostgresDatabaseClusters {
    conn: ConnInfo,
}

impl PostgresDatabaseClusters {
    /// From the admin connection held in a Secret: a libpq URI
    /// (`postgres://user:pass@host:port/db?sslmode=require`) or keyword/value
    /// string (`host=… port=… user=… password=… dbname=… sslmode=…`).
    /// Supported parameters: host, port, user, password, dbname, sslmode
    /// (disable, allow, prefer, require, verify-ca, verify-full),
    /// sslrootcert (a PEM file, or `system`), application_name, options,
    /// connect_timeout. Nothing connects until the first call.
    pub fn from_connection_string(s: &str) -> Result<Self, ProviderError> {
        Ok(PostgresDatabaseClusters {
            conn: ConnInfo::parse(s)?,
        })
    }

    /// Where the cluster's clients connect: the admin connection's host and port.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.conn.host.clone(),
            port: i32::from(self.conn.port),
        }
    }

    /// How an application connects as `user` of `desired`: the physical
    /// role and database names (prefixed), for the connection Secret. The
    /// database is the first one the user may use (one it owns, else the
    /// first of its `databases`).
    pub fn connection_details(
        &self,
        desired: &DesiredDatabaseCluster,
        user: &str,
    ) -> Result<ConnectionDetails, ProviderError> {
        let plan = Plan::new(desired)?;
        let Some(u) = plan.users.iter().find(|u| u.logical == user) else {
            return Err(ProviderError::terminal(
                reasons::INVALID_SPEC,
                format!("user {user:?} is not in spec.users"),
            ));
        };
        let spec_dbs = desired
            .users
            .iter()
            .find(|s| s.name == user)
            .map(|s| s.databases.clone())
            .unwrap_or_default();
        let database = plan
            .databases
            .iter()
            .find(|d| d.owner == u.physical)
            .or_else(|| {
                spec_dbs
                    .iter()
                    .find_map(|name| plan.databases.iter().find(|d| &d.logical == name))
            })
            .map(|d| d.physical.clone());
        Ok(ConnectionDetails {
            host: self.conn.host.clone(),
            port: self.conn.port,
            username: u.physical.clone(),
            database,
            sslmode: self.conn.sslmode,
        })
    }

    async fn admin(&self) -> Result<Session, ProviderError> {
        self.conn.session(&self.conn.admin_db).await
    }

    fn observed(&self, inv: &Inventory) -> ObservedDatabaseCluster {
        ObservedDatabaseCluster {
            endpoint: Some(self.endpoint()),
            replicas_desired: 1,
            replicas_ready: 1,
            version: inv.version.split_whitespace().next().map(str::to_string),
        }
    }

    /// Whether the user's desired password is the one the server has
    /// (see `passwords`): from the stored verifier when the admin role can
    /// read it, else by logging in (at most once per [`LOGIN_RECHECK`] per
    /// role and password). `None` when the server would not say (e.g.
    /// pg_hba.conf has no entry for this client).
    async fn password_matches(
        &self,
        plan: &Plan,
        inv: &Inventory,
        user: &UserPlan,
    ) -> Result<Option<bool>, ProviderError> {
        let Some(password) = &user.password else {
            return Ok(None);
        };
        let server = &self.conn.server;
        if let Some(stored) = inv.passwords.as_ref().map(|p| p.get(&user.physical)) {
            let verdict = match stored.and_then(|v| v.as_ref()) {
                // No password at all.
                None => Verdict::Mismatch,
                Some(v) => passwords::check_stored(server, &user.physical, &v.0, password.expose()),
            };
            match verdict {
                Verdict::Match => return Ok(Some(true)),
                Verdict::Mismatch => return Ok(Some(false)),
                Verdict::Unknown => {}
            }
        }
        if passwords::login_fresh(server, &user.physical, password.expose()) {
            return Ok(Some(true));
        }
        let matches = self.login_check(plan, inv, user, password.expose()).await?;
        match matches {
            Some(true) => passwords::record_login(server, &user.physical, password.expose()),
            _ => passwords::forget(server, &user.physical),
        }
        Ok(matches)
    }

    /// Logs in as the user with its desired password.
    async fn login_check(
        &self,
        plan: &Plan,
        inv: &Inventory,
        user: &UserPlan,
        password: &str,
    ) -> Result<Option<bool>, ProviderError> {
        let db = user
            .access
            .keys()
            .find(|db| inv.db_claim(plan, db).is_ours())
            .cloned()
            .unwrap_or_else(|| self.conn.admin_db.clone());
        match self.conn.connect_as(&user.physical, password, &db).await {
            Ok(_client) => Ok(Some(true)),
            Err(ConnectFailure::Pg(e)) => match e.code() {
                Some(code) if *code == SqlState::INVALID_PASSWORD => Ok(Some(false)),
                Some(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                    tracing::debug!(user = %user.logical, "cannot verify the password by logging in (refused before authentication)");
                    Ok(None)
                }
                // Authenticated, then refused (connection limit, CONNECT privilege, ...).
                Some(_) => Ok(Some(true)),
                None => Err(classify(
                    &e,
                    &format!("checking the password of user {}", user.logical),
                )),
            },
            Err(ConnectFailure::TimedOut) => Err(ProviderError::unavailable(format!(
                "PostgreSQL unavailable: checking the password of user {} timed out",
                user.logical
            ))),
        }
    }

    /// Whether converge must (re)set the user's password: unless it is
    /// known to match, from the stored verifier or a recent login. Never
    /// logs in.
    fn password_needs_setting(&self, inv: &Inventory, user: &UserPlan) -> bool {
        let Some(password) = &user.password else {
            return false;
        };
        let server = &self.conn.server;
        match inv.passwords.as_ref().map(|p| p.get(&user.physical)) {
            Some(Some(Some(v))) => {
                match passwords::check_stored(server, &user.physical, &v.0, password.expose()) {
                    Verdict::Match => false,
                    Verdict::Mismatch => true,
                    Verdict::Unknown => {
                        !passwords::login_fresh(server, &user.physical, password.expose())
                    }
                }
            }
            Some(_) => true,
            None => !passwords::login_fresh(server, &user.physical, password.expose()),
        }
    }

    fn grantees(plan: &Plan) -> Vec<String> {
        plan.role_names()
    }

    async fn converge(
        &self,
        desired: &DesiredDatabaseCluster,
        drop_extras: bool,
    ) -> Result<(), ProviderError> {
        let plan = Plan::new(desired)?;
        if let Some(user) = plan.users.iter().find(|u| u.password.is_none()) {
            return Err(ProviderError::terminal(
                reasons::INVALID_SPEC,
                format!("no password was provided for user {}", user.logical),
            ));
        }
        let admin = self.admin().await?;
        let inv = Inventory::load(&admin, &plan).await?;
        inv.check_conflicts(&plan)?;
        apply(&admin, &object_fixes(&plan, &inv, true)).await?;

        let inv = Inventory::load(&admin, &plan).await?;
        // Only passwords not known to match: each ALTER ROLE writes a new
        // verifier, remembered so the next observe need not recompute it.
        for user in &plan.users {
            let Some(password) = user.password.as_ref() else {
                continue;
            };
            if !self.password_needs_setting(&inv, user) {
                continue;
            }
            let verifier = verifier(password.expose());
            let fix = Fix::atomic(
                format!("setting the password of user {}", user.logical),
                vec![format!(
                    "ALTER ROLE {} {}",
                    ident(&user.physical),
                    verifier_clause(&verifier)
                )],
            );
            apply(&admin, std::slice::from_ref(&fix)).await?;
            passwords::record_set(
                &self.conn.server,
                &user.physical,
                &verifier,
                password.expose(),
            );
        }

        apply(&admin, &grant_fixes(&plan, &inv)).await?;
        let grantees = Self::grantees(&plan);
        for db in &plan.databases {
            let client = self.conn.session(&db.physical).await?;
            let insp = DbInspection::load(&client, &grantees, &db.owner).await?;
            apply(&client, &db_fixes(&plan, &db.physical, &insp)).await?;
        }
        if drop_extras {
            drop_databases(&self.conn, &admin, inv.version_num, &inv.extra_dbs(&plan)).await?;
            let keep: BTreeMap<String, String> = plan
                .databases
                .iter()
                .map(|d| (d.physical.clone(), d.owner.clone()))
                .collect();
            let groups = BTreeSet::from([plan.owner_role.clone()]);
            drop_roles(&self.conn, &admin, &inv.extra_roles(&plan), &keep, &groups).await?;
        }
        Ok(())
    }

    /// Re-applies a cluster's grants inside one of its databases (after a
    /// copy created tables there).
    async fn regrant(&self, plan: &Plan, db: &str) -> Result<(), ProviderError> {
        let Some(db_plan) = plan.database(db) else {
            return Ok(());
        };
        let client = self.conn.session(db).await?;
        let insp = DbInspection::load(&client, &Self::grantees(plan), &db_plan.owner).await?;
        apply(&client, &db_fixes(plan, db, &insp)).await
    }
}

#[async_trait]
impl ExternalClient for PostgresDatabaseClusters {
    type Desired = DesiredDatabaseCluster;
    type Observed = ObservedDatabaseCluster;

    async fn observe(&self, desired: &DesiredDatabaseCluster) -> Observed<Self> {
        let plan = Plan::new(desired)?;
        let inv = {
            let admin = self.admin().await?;
            Inventory::load(&admin, &plan).await?
        };
        inv.check_conflicts(&plan)?;
        let extra_dbs = inv.extra_dbs(&plan);
        let extra_roles = inv.extra_roles(&plan);
        let missing: Vec<String> = plan
            .role_names()
            .into_iter()
            .filter(|r| !inv.role_claim(&plan, r).exists())
            .map(|r| format!("role {r}"))
            .chain(
                plan.database_names()
                    .into_iter()
                    .filter(|d| !inv.db_claim(&plan, d).exists())
                    .map(|d| format!("database {d}")),
            )
            .collect();
        let total = plan.role_names().len() + plan.databases.len();
        if missing.len() == total && extra_dbs.is_empty() && extra_roles.is_empty() {
            return Ok(Observation::Missing);
        }

        let mut drift: Vec<String> = object_fixes(&plan, &inv, false)
            .into_iter()
            .map(|f| f.drift)
            .collect();
        drift.extend(grant_fixes(&plan, &inv).into_iter().map(|f| f.drift));
        let grantees = Self::grantees(&plan);
        for db in &plan.databases {
            if !inv.db_claim(&plan, &db.physical).is_ours() {
                continue;
            }
            let client = self.conn.session(&db.physical).await?;
            let insp = DbInspection::load(&client, &grantees, &db.owner).await?;
            drop(client);
            drift.extend(
                db_fixes(&plan, &db.physical, &insp)
                    .into_iter()
                    .map(|f| f.drift),
            );
        }
        for db in &extra_dbs {
            drift.push(format!("database {db} is no longer in the spec"));
        }
        for role in &extra_roles {
            drift.push(format!("role {role} is no longer in the spec"));
        }
        for user in &plan.users {
            if inv.role_claim(&plan, &user.physical) == Claim::Absent {
                continue;
            }
            if self.password_matches(&plan, &inv, user).await? == Some(false) {
                drift.push(format!("password of user {}", user.logical));
            }
        }
        let readiness = if missing.is_empty() {
            Readiness::ready(format!(
                "{} database(s) and {} user(s) on {}:{}",
                plan.databases.len(),
                plan.users.len(),
                self.conn.host,
                self.conn.port
            ))
        } else {
            Readiness::not_ready(
                reasons::CREATING,
                format!("missing: {}", missing.join(", ")),
            )
        };
        Ok(Observation::Exists {
            up_to_date: drift.is_empty(),
            drift,
            readiness,
            observed: self.observed(&inv),
        })
    }

    async fn create(&self, desired: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        self.converge(desired, false).await
    }

    async fn update(
        &self,
        desired: &DesiredDatabaseCluster,
        _observed: &ObservedDatabaseCluster,
    ) -> Result<(), ProviderError> {
        self.converge(desired, true).await
    }

    async fn delete(&self, desired: &DesiredDatabaseCluster) -> Result<(), ProviderError> {
        // A spec that no longer validates must not block a delete.
        let plan = Plan::new(desired).unwrap_or_else(|_| Plan::for_cleanup(desired));
        if plan.prefix.is_empty() {
            return Ok(());
        }
        let admin = self.admin().await?;
        let inv = Inventory::load(&admin, &plan).await?;
        let dbs: Vec<String> = inv
            .dbs
            .keys()
            .filter(|d| match inv.db_claim(&plan, d) {
                Claim::Ours | Claim::Stale => plan.has_prefix(d),
                Claim::Adoptable => true,
                _ => false,
            })
            .cloned()
            .collect();
        let roles: Vec<String> = inv
            .roles
            .keys()
            .filter(|r| {
                matches!(inv.role_claim(&plan, r), Claim::Ours | Claim::Stale) && plan.has_prefix(r)
            })
            .cloned()
            .collect();
        drop_databases(&self.conn, &admin, inv.version_num, &dbs).await?;
        let groups = BTreeSet::from([plan.owner_role.clone()]);
        drop_roles(&self.conn, &admin, &roles, &BTreeMap::new(), &groups).await
    }
}

#[async_trait]
impl DatabaseClusterClient for PostgresDatabaseClusters {
    /// The admin connection's host and port: clusters of two Environments
    /// whose connections name the same server share it.
    fn server_identity(&self) -> Option<String> {
        Some(format!("server {}:{}", self.conn.host, self.conn.port))
    }

    /// Physical (cluster-prefixed) names of a declared user and database.
    fn connection_names(
        &self,
        target: &DesiredDatabaseCluster,
        user: &str,
        database: &str,
    ) -> (String, String) {
        let Ok(plan) = Plan::new(target) else {
            return (user.to_string(), database.to_string());
        };
        let user = plan
            .users
            .iter()
            .find(|u| u.logical == user)
            .map_or_else(|| user.to_string(), |u| u.physical.clone());
        let database = plan
            .databases
            .iter()
            .find(|d| d.logical == database)
            .map_or_else(|| database.to_string(), |d| d.physical.clone());
        (user, database)
    }

    async fn copy_from(
        &self,
        target: &DesiredDatabaseCluster,
        request: &CopyRequest,
    ) -> Result<CopyReport, ProviderError> {
        let target_plan = Plan::new(target)?;
        let source_plan = Plan::new(&request.source)?;
        let report = copy::copy(&self.conn, &target_plan, &source_plan, request).await?;
        for db in &target_plan.databases {
            self.regrant(&target_plan, &db.physical).await?;
        }
        Ok(report)
    }
}
