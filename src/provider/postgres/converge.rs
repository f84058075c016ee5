//! From (plan, what the catalogs say) to fixes: each fix is a drift line a
//! person can read plus the SQL that removes it. `observe` reports the drift
//! lines, `create`/`update` run the SQL: one computation, so what is reported
//! is exactly what gets changed.

use std::collections::{BTreeMap, BTreeSet};

use postgres_protocol::password::scram_sha_256;

use super::catalog::{Claim, DbInspection, Inventory, Object, RoleAttrs};
use super::conn::{ConnInfo, classify};
use super::names::{Access, Plan};
use super::pool::Session;
use super::sql::{ident, idents, lit, qualified};
use crate::provider::ProviderError;

/// One correction.
#[derive(Clone, Debug)]
pub struct Fix {
    /// Human-readable, never a secret.
    pub drift: String,
    pub statements: Vec<String>,
    /// Run each statement on its own (CREATE DATABASE cannot run in a
    /// transaction block); otherwise all statements run atomically.
    pub one_by_one: bool,
}

impl Fix {
    pub fn atomic(drift: impl Into<String>, statements: Vec<String>) -> Self {
        Fix {
            drift: drift.into(),
            statements,
            one_by_one: false,
        }
    }
}

/// Runs fixes in order. Errors name the fix, never its SQL (which may hold
/// a password verifier).
pub async fn apply(client: &Session, fixes: &[Fix]) -> Result<(), ProviderError> {
    for fix in fixes {
        if fix.statements.is_empty() {
            continue;
        }
        let doing = format!("fixing \"{}\"", fix.drift);
        if fix.one_by_one {
            for statement in &fix.statements {
                client
                    .batch_execute(statement)
                    .await
                    .map_err(|e| classify(&e, &doing))?;
            }
        } else {
            // A multi-statement simple query runs as one implicit transaction.
            client
                .batch_execute(&fix.statements.join(";\n"))
                .await
                .map_err(|e| classify(&e, &doing))?;
        }
    }
    Ok(())
}

fn comment_role(plan: &Plan, role: &str) -> String {
    format!(
        "COMMENT ON ROLE {} IS {}",
        ident(role),
        lit(&plan.marker.comment())
    )
}

fn comment_db(plan: &Plan, db: &str) -> String {
    format!(
        "COMMENT ON DATABASE {} IS {}",
        ident(db),
        lit(&plan.marker.comment())
    )
}

/// The SCRAM-SHA-256 verifier of a password (fresh salt), computed here so
/// the password itself never travels in SQL text.
pub fn verifier(password: &str) -> String {
    scram_sha_256(password.as_bytes())
}

/// `PASSWORD '<verifier>'`.
pub fn password_clause(password: &str) -> String {
    verifier_clause(&verifier(password))
}

/// `PASSWORD '<verifier>'` for a verifier already computed.
pub fn verifier_clause(verifier: &str) -> String {
    format!("PASSWORD {}", lit(verifier))
}

/// Roles and databases: existence, attributes, owners, markers.
/// `with_passwords`: give created login roles their password (create/update).
pub fn object_fixes(plan: &Plan, inv: &Inventory, with_passwords: bool) -> Vec<Fix> {
    let mut fixes = Vec::new();
    let mut role = |name: &str, attrs: RoleAttrs, password: Option<&str>| match inv
        .role_claim(plan, name)
    {
        Claim::Absent => {
            let mut create = format!("CREATE ROLE {} {}", ident(name), attrs.sql());
            if let Some(p) = password.filter(|_| with_passwords) {
                create.push(' ');
                create.push_str(&password_clause(p));
            }
            fixes.push(Fix::atomic(
                format!("role {name} is missing"),
                vec![create, comment_role(plan, name)],
            ));
        }
        claim => {
            if let Some(row) = inv.roles.get(name) {
                let diff = row.attrs.differences(&attrs);
                if !diff.is_empty() {
                    fixes.push(Fix::atomic(
                        format!("role {name} has {}", diff.join(", ")),
                        vec![format!("ALTER ROLE {} {}", ident(name), attrs.sql())],
                    ));
                }
            }
            if claim == Claim::Stale {
                fixes.push(Fix::atomic(
                    format!("role {name} carries the marker of an earlier incarnation of this DatabaseCluster"),
                    vec![comment_role(plan, name)],
                ));
            }
        }
    };
    role(&plan.owner_role, RoleAttrs::wanted(false, -1), None);
    for user in &plan.users {
        role(
            &user.physical,
            RoleAttrs::wanted(true, user.connection_limit),
            user.password.as_ref().map(|p| p.expose()),
        );
    }
    for db in &plan.databases {
        match inv.db_claim(plan, &db.physical) {
            Claim::Absent => fixes.push(Fix {
                drift: format!("database {} is missing", db.physical),
                statements: vec![
                    format!(
                        "CREATE DATABASE {} OWNER {}",
                        ident(&db.physical),
                        ident(&db.owner)
                    ),
                    comment_db(plan, &db.physical),
                ],
                one_by_one: true,
            }),
            claim => {
                if matches!(claim, Claim::Stale | Claim::Adoptable) {
                    fixes.push(Fix::atomic(
                        format!(
                            "database {} lacks this cluster's ownership marker",
                            db.physical
                        ),
                        vec![comment_db(plan, &db.physical)],
                    ));
                }
                if let Some(row) = inv.dbs.get(&db.physical)
                    && row.owner != db.owner
                {
                    fixes.push(Fix::atomic(
                        format!(
                            "database {} is owned by {} instead of {}",
                            db.physical, row.owner, db.owner
                        ),
                        vec![format!(
                            "ALTER DATABASE {} OWNER TO {}",
                            ident(&db.physical),
                            ident(&db.owner)
                        )],
                    ));
                }
            }
        }
    }
    fixes
}

fn privilege_list(privileges: &BTreeSet<String>) -> String {
    privileges
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn set_of(privileges: &[&str]) -> BTreeSet<String> {
    privileges.iter().map(|p| p.to_string()).collect()
}

/// Database-level grants, memberships and per-database role settings (run
/// on the admin connection once the objects exist).
pub fn grant_fixes(plan: &Plan, inv: &Inventory) -> Vec<Fix> {
    let mut fixes = Vec::new();
    let cluster_roles: BTreeSet<String> = plan.role_names().into_iter().collect();

    for db in &plan.databases {
        if !inv.db_claim(plan, &db.physical).is_ours() {
            continue;
        }
        let empty = BTreeMap::new();
        let acl = inv.db_acl.get(&db.physical).unwrap_or(&empty);
        let q = ident(&db.physical);
        if let Some(public) = acl.get(&None).filter(|p| !p.is_empty()) {
            fixes.push(Fix::atomic(
                format!(
                    "database {}: PUBLIC has {}",
                    db.physical,
                    privilege_list(public)
                ),
                vec![format!("REVOKE ALL ON DATABASE {q} FROM PUBLIC")],
            ));
        }
        for user in &plan.users {
            if user.physical == db.owner {
                continue;
            }
            let want = match user.access.get(&db.physical) {
                Some(a) if a.connects() => set_of(&["CONNECT"]),
                _ => BTreeSet::new(),
            };
            let have = acl
                .get(&Some(user.physical.clone()))
                .cloned()
                .unwrap_or_default();
            if have != want {
                let mut statements = vec![format!(
                    "REVOKE ALL ON DATABASE {q} FROM {}",
                    ident(&user.physical)
                )];
                if !want.is_empty() {
                    statements.push(format!(
                        "GRANT CONNECT ON DATABASE {q} TO {}",
                        ident(&user.physical)
                    ));
                }
                fixes.push(Fix::atomic(
                    format!(
                        "database {}: user {} has [{}], wants [{}]",
                        db.physical,
                        user.logical,
                        privilege_list(&have),
                        privilege_list(&want)
                    ),
                    statements,
                ));
            }
        }
        // Anybody else holding privileges on this cluster's database.
        for (grantee, privileges) in acl {
            let Some(grantee) = grantee else { continue };
            if plan.users.iter().any(|u| &u.physical == grantee) {
                continue;
            }
            if grantee == &inv.admin || privileges.is_empty() || grantee == &db.owner {
                continue;
            }
            fixes.push(Fix::atomic(
                format!(
                    "database {}: role {grantee} (not a user of this cluster) has {}",
                    db.physical,
                    privilege_list(privileges)
                ),
                vec![format!(
                    "REVOKE ALL ON DATABASE {q} FROM {}",
                    ident(grantee)
                )],
            ));
        }
    }

    // Memberships of the cluster's roles.
    for name in plan.role_names() {
        if !inv.role_claim(plan, &name).exists() {
            continue;
        }
        let want = match plan.users.iter().find(|u| u.physical == name) {
            Some(user) => plan.memberships(user),
            None => BTreeSet::new(),
        };
        let have = inv.member_of.get(&name).cloned().unwrap_or_default();
        for missing in want.difference(&have) {
            fixes.push(Fix::atomic(
                format!("role {name} is not a member of {missing}"),
                vec![format!("GRANT {} TO {}", ident(missing), ident(&name))],
            ));
        }
        for extra in have.difference(&want) {
            fixes.push(Fix::atomic(
                format!("role {name} is a member of {extra}"),
                vec![format!("REVOKE {} FROM {}", ident(extra), ident(&name))],
            ));
        }
        // Members from outside the cluster.
        for member in inv.members.get(&name).into_iter().flatten() {
            if cluster_roles.contains(member) || member == &inv.admin {
                continue;
            }
            fixes.push(Fix::atomic(
                format!("role {member} (not a user of this cluster) is a member of {name}"),
                vec![format!("REVOKE {} FROM {}", ident(&name), ident(member))],
            ));
        }
    }

    // `SET role` of owner-privileged users, per database.
    for user in &plan.users {
        if !inv.role_claim(plan, &user.physical).exists() {
            continue;
        }
        let want = plan.role_settings(user);
        let have = inv
            .role_settings
            .get(&user.physical)
            .cloned()
            .unwrap_or_default();
        for (db, role) in &want {
            if have.get(db) != Some(role) && inv.db_claim(plan, db).is_ours() {
                fixes.push(Fix::atomic(
                    format!(
                        "user {} does not act as {role} in database {db}",
                        user.logical
                    ),
                    vec![format!(
                        "ALTER ROLE {} IN DATABASE {} SET role = {}",
                        ident(&user.physical),
                        ident(db),
                        lit(role)
                    )],
                ));
            }
        }
        for (db, role) in &have {
            if want.contains_key(db) {
                continue;
            }
            let statement = if db.is_empty() {
                format!("ALTER ROLE {} RESET role", ident(&user.physical))
            } else {
                format!(
                    "ALTER ROLE {} IN DATABASE {} RESET role",
                    ident(&user.physical),
                    ident(db)
                )
            };
            fixes.push(Fix::atomic(
                format!(
                    "user {} acts as {role} in {}",
                    user.logical,
                    if db.is_empty() {
                        "every database".to_string()
                    } else {
                        format!("database {db}")
                    }
                ),
                vec![statement],
            ));
        }
    }
    fixes
}

fn object_sql(object: &Object) -> String {
    match object {
        Object::Schema(s) => format!("SCHEMA {}", ident(s)),
        Object::Relation(s, n, 'S') => format!("SEQUENCE {}", qualified(s, n)),
        Object::Relation(s, n, _) => format!("TABLE {}", qualified(s, n)),
    }
}

/// Privileges inside one database (run connected to it).
pub fn db_fixes(plan: &Plan, db: &str, insp: &DbInspection) -> Vec<Fix> {
    let mut fixes = Vec::new();
    let Some(db_plan) = plan.database(db) else {
        return fixes;
    };
    let owner = &db_plan.owner;
    if insp.has_public && insp.public_create_by_public {
        fixes.push(Fix::atomic(
            format!("database {db}: PUBLIC can create in schema public"),
            vec!["REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_string()],
        ));
    }
    if insp.has_public && !insp.owner_creates_in_public {
        fixes.push(Fix::atomic(
            format!("database {db}: owner {owner} cannot create in schema public"),
            vec![format!(
                "GRANT USAGE, CREATE ON SCHEMA public TO {}",
                ident(owner)
            )],
        ));
    }
    for user in &plan.users {
        let access = user.access.get(db).copied();
        if access == Some(Access::Owns) {
            continue;
        }
        let u = ident(&user.physical);
        let mut statements = Vec::new();
        let mut differing = Vec::new();
        for (object, object_owner) in &insp.objects {
            if object_owner == &user.physical {
                continue;
            }
            let want = set_of(match (object, access) {
                (_, None) => &[],
                (Object::Schema(_), Some(a)) => a.schema_privileges(),
                (o, Some(a)) if o.is_sequence() => a.sequence_privileges(),
                (_, Some(a)) => a.table_privileges(),
            });
            let have = insp
                .acl
                .get(&(object.clone(), user.physical.clone()))
                .cloned()
                .unwrap_or_default();
            if have != want {
                differing.push(object.describe());
                let target = object_sql(object);
                statements.push(format!("REVOKE ALL ON {target} FROM {u}"));
                if !want.is_empty() {
                    statements.push(format!(
                        "GRANT {} ON {target} TO {u}",
                        privilege_list(&want)
                    ));
                }
            }
        }
        let mut defaults_differ = Vec::new();
        if owner != &user.physical {
            for (kind, keyword) in [('r', "TABLES"), ('S', "SEQUENCES"), ('n', "SCHEMAS")] {
                let want = set_of(match (kind, access) {
                    (_, None) => &[],
                    ('r', Some(a)) => a.table_privileges(),
                    ('S', Some(a)) => a.sequence_privileges(),
                    (_, Some(a)) => a.schema_privileges(),
                });
                let have = insp
                    .default_acl
                    .get(&(owner.clone(), kind, user.physical.clone()))
                    .cloned()
                    .unwrap_or_default();
                if have != want {
                    defaults_differ.push(keyword.to_lowercase());
                    let prefix = format!("ALTER DEFAULT PRIVILEGES FOR ROLE {}", ident(owner));
                    statements.push(format!("{prefix} REVOKE ALL ON {keyword} FROM {u}"));
                    if !want.is_empty() {
                        statements.push(format!(
                            "{prefix} GRANT {} ON {keyword} TO {u}",
                            privilege_list(&want)
                        ));
                    }
                }
            }
        }
        if statements.is_empty() {
            continue;
        }
        let mut parts = Vec::new();
        if !differing.is_empty() {
            let shown: Vec<_> = differing.iter().take(3).cloned().collect();
            let more = differing.len().saturating_sub(shown.len());
            parts.push(format!(
                "privileges differ on {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        if !defaults_differ.is_empty() {
            parts.push(format!(
                "default privileges for future {} differ",
                defaults_differ.join(", ")
            ));
        }
        fixes.push(Fix::atomic(
            format!("database {db}: user {}: {}", user.logical, parts.join("; ")),
            statements,
        ));
    }
    fixes
}

/// Drops databases, ending their sessions first (bulkhead's pooled ones
/// too).
pub async fn drop_databases(
    conn: &ConnInfo,
    client: &Session,
    version_num: i32,
    dbs: &[String],
) -> Result<(), ProviderError> {
    for db in dbs {
        conn.forget_sessions(db);
        let doing = format!("dropping database {db}");
        let err = |e: tokio_postgres::Error| classify(&e, &doing);
        let name = ident(db);
        if version_num >= 130000 {
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .map_err(err)?;
        } else {
            client
                .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                .await
                .map_err(err)?;
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname::text = $1::text AND pid <> pg_backend_pid()",
                    &[db],
                )
                .await
                .map_err(err)?;
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Drops roles: ends their sessions, removes what they own or were granted
/// in every database (in `keep`, databases of the cluster that stay, their
/// objects are handed to the database's owner role instead of dropped),
/// then the roles. Group roles last.
pub async fn drop_roles(
    conn: &ConnInfo,
    admin: &Session,
    roles: &[String],
    keep: &BTreeMap<String, String>,
    group_roles: &BTreeSet<String>,
) -> Result<(), ProviderError> {
    if roles.is_empty() {
        return Ok(());
    }
    let doing = format!("dropping roles {}", roles.join(", "));
    let err = |e: tokio_postgres::Error| classify(&e, &doing);
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename::text = ANY($1::text[]) AND pid <> pg_backend_pid()",
            &[&roles],
        )
        .await
        .map_err(err)?;
    let rows = admin
        .query(
            "SELECT DISTINCT d.datname::text
               FROM pg_shdepend s
               JOIN pg_database d ON d.oid = s.dbid
               JOIN pg_roles r ON r.oid = s.refobjid
              WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname::text = ANY($1::text[])
                AND d.datallowconn AND d.datname <> current_database()",
            &[&roles],
        )
        .await
        .map_err(err)?;
    let list = idents(roles.iter());
    for row in rows {
        let db: String = row.try_get(0).map_err(err)?;
        let client = conn.session(&db).await?;
        let mut sql = String::new();
        if let Some(owner) = keep.get(&db).filter(|o| !roles.contains(o)) {
            sql.push_str(&format!("REASSIGN OWNED BY {list} TO {};\n", ident(owner)));
        }
        sql.push_str(&format!("DROP OWNED BY {list}"));
        client.batch_execute(&sql).await.map_err(err)?;
    }
    admin
        .batch_execute(&format!("DROP OWNED BY {list}"))
        .await
        .map_err(err)?;
    let (groups, logins): (Vec<&String>, Vec<&String>) =
        roles.iter().partition(|r| group_roles.contains(*r));
    for role in logins.into_iter().chain(groups) {
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(role)))
            .await
            .map_err(err)?;
        super::passwords::forget(&conn.server, role);
    }
    Ok(())
}
