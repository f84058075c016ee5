//! Reading the server's catalogs: what exists of a cluster (roles,
//! databases, grants, memberships, per-role settings) and, inside one
//! database, the privileges on its schemas, tables and sequences.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::conn::classify;
use super::names::{MARKER_PREFIX, Marker, Plan};
use super::passwords::StoredVerifier;
use super::pool::Session;
use crate::provider::ProviderError;
use crate::reasons;

/// Role attributes bulkhead manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleAttrs {
    pub login: bool,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub inherit: bool,
    pub connection_limit: i32,
}

impl RoleAttrs {
    /// Least privilege: nothing but LOGIN (for users) and INHERIT.
    pub fn wanted(login: bool, connection_limit: i32) -> Self {
        RoleAttrs {
            login,
            superuser: false,
            createdb: false,
            createrole: false,
            replication: false,
            bypassrls: false,
            inherit: true,
            connection_limit,
        }
    }

    /// The attribute clause of CREATE/ALTER ROLE.
    pub fn sql(&self) -> String {
        let flag = |on: bool, name: &str| {
            if on {
                name.to_string()
            } else {
                format!("NO{name}")
            }
        };
        format!(
            "{} {} {} {} {} {} {} CONNECTION LIMIT {}",
            flag(self.login, "LOGIN"),
            flag(self.superuser, "SUPERUSER"),
            flag(self.createdb, "CREATEDB"),
            flag(self.createrole, "CREATEROLE"),
            flag(self.replication, "REPLICATION"),
            flag(self.bypassrls, "BYPASSRLS"),
            flag(self.inherit, "INHERIT"),
            self.connection_limit
        )
    }

    /// What differs from `wanted`, for a drift message.
    pub fn differences(&self, wanted: &RoleAttrs) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, have: bool, want: bool| {
            if have != want {
                out.push(format!("{}{name}", if have { "" } else { "NO" }));
            }
        };
        check("LOGIN", self.login, wanted.login);
        check("SUPERUSER", self.superuser, wanted.superuser);
        check("CREATEDB", self.createdb, wanted.createdb);
        check("CREATEROLE", self.createrole, wanted.createrole);
        check("REPLICATION", self.replication, wanted.replication);
        check("BYPASSRLS", self.bypassrls, wanted.bypassrls);
        check("INHERIT", self.inherit, wanted.inherit);
        if self.connection_limit != wanted.connection_limit {
            out.push(format!(
                "CONNECTION LIMIT {} (want {})",
                self.connection_limit, wanted.connection_limit
            ));
        }
        out
    }
}

#[derive(Clone, Debug)]
pub struct RoleRow {
    pub attrs: RoleAttrs,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DbRow {
    pub owner: String,
    pub comment: Option<String>,
}

/// Whose an existing object is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    Absent,
    /// Carries this cluster's marker.
    Ours,
    /// Carries this cluster's namespace/name with another uid (an earlier
    /// incarnation of the same object, e.g. re-created after an Orphan
    /// delete): adopted, and the marker rewritten.
    Stale,
    /// A database without any comment, owned by one of this cluster's
    /// marked roles under this cluster's physical name: a create that
    /// crashed between CREATE DATABASE and COMMENT.
    Adoptable,
    /// Someone else's, or unmanaged.
    Foreign {
        marked: bool,
    },
}

impl Claim {
    pub fn is_ours(&self) -> bool {
        matches!(self, Claim::Ours | Claim::Stale | Claim::Adoptable)
    }
    pub fn exists(&self) -> bool {
        !matches!(self, Claim::Absent)
    }
}

/// What the server holds of one cluster (and whatever occupies its names).
#[derive(Clone, Debug)]
pub struct Inventory {
    pub version: String,
    pub version_num: i32,
    /// The admin role (current_user).
    pub admin: String,
    pub roles: BTreeMap<String, RoleRow>,
    pub dbs: BTreeMap<String, DbRow>,
    /// Database → grantee (None = PUBLIC) → privileges, owner excluded.
    pub db_acl: BTreeMap<String, BTreeMap<Option<String>, BTreeSet<String>>>,
    /// Role → the roles it is a member of (for cluster roles).
    pub member_of: BTreeMap<String, BTreeSet<String>>,
    /// Role → its members (for cluster roles).
    pub members: BTreeMap<String, BTreeSet<String>>,
    /// Role → database ("" = every database) → value of its `role` setting.
    pub role_settings: BTreeMap<String, BTreeMap<String, String>>,
    /// Role → its stored password verifier (None: no password), when the
    /// admin role may read `pg_authid`; `None` when it may not.
    pub passwords: Option<BTreeMap<String, Option<StoredVerifier>>>,
}

fn marker_claim(plan: &Plan, comment: Option<&str>) -> Claim {
    match comment.and_then(Marker::parse) {
        Some(m) if m.identity == plan.marker.identity => {
            if m.uid == plan.marker.uid {
                Claim::Ours
            } else {
                Claim::Stale
            }
        }
        Some(_) => Claim::Foreign { marked: true },
        None => Claim::Foreign { marked: false },
    }
}

/// The server's facts and the cluster's databases with their ACLs, in one
/// query (one row even when no database matches).
const DATABASES_SQL: &str = "
SELECT current_setting('server_version'), current_setting('server_version_num')::int4,
       current_user::text, has_table_privilege('pg_catalog.pg_authid', 'SELECT'),
       d.datname, d.owner, d.comment, d.grantees, d.privileges
  FROM (SELECT 1) one
  LEFT JOIN (
       SELECT d.datname::text AS datname, pg_get_userbyid(d.datdba)::text AS owner,
              shobj_description(d.oid, 'pg_database') AS comment, acl.grantees, acl.privileges
         FROM pg_database d
         LEFT JOIN LATERAL (
              SELECT array_agg(CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END) AS grantees,
                     array_agg(a.privilege_type::text) AS privileges
                FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
               WHERE a.grantee <> d.datdba) acl ON true
        WHERE d.datname = ANY($1::name[])
           OR d.oid IN (SELECT s.objoid FROM pg_shdescription s
                         WHERE s.classoid = 'pg_database'::regclass
                           AND left(s.description, length($2::text)) = $2::text)
  ) d ON true";

/// The cluster's roles with their attributes, marker, memberships both ways
/// and per-database `role` settings, in one query. `{source}` is pg_roles,
/// or pg_authid (to read the stored password verifier) when readable.
fn roles_sql(read_passwords: bool) -> String {
    let (source, password) = if read_passwords {
        ("pg_catalog.pg_authid", "r.rolpassword")
    } else {
        ("pg_catalog.pg_roles", "NULL::text")
    };
    format!(
        "
SELECT r.rolname::text, r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication,
       r.rolbypassrls, r.rolinherit, r.rolconnlimit, shobj_description(r.oid, 'pg_authid'),
       ARRAY(SELECT g.rolname::text FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid
              WHERE am.member = r.oid),
       ARRAY(SELECT m.rolname::text FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member
              WHERE am.roleid = r.oid),
       st.dbs, st.vals, {password}
  FROM {source} r
  LEFT JOIN LATERAL (
       SELECT array_agg(coalesce(d.datname::text, '') ORDER BY s.setdatabase, c.n) AS dbs,
              array_agg(substr(c.v, 6) ORDER BY s.setdatabase, c.n) AS vals
         FROM pg_db_role_setting s
         LEFT JOIN pg_database d ON d.oid = s.setdatabase,
              unnest(s.setconfig) WITH ORDINALITY c(v, n)
        WHERE s.setrole = r.oid AND c.v LIKE 'role=%') st ON true
 WHERE r.rolname = ANY($1::name[])
    OR r.oid IN (SELECT s.objoid FROM pg_shdescription s
                  WHERE s.classoid = 'pg_authid'::regclass
                    AND left(s.description, length($2::text)) = $2::text)"
    )
}

impl Inventory {
    /// Two queries on the admin session: [`DATABASES_SQL`] and
    /// [`roles_sql`].
    pub async fn load(client: &Session, plan: &Plan) -> Result<Inventory, ProviderError> {
        let err = |e: tokio_postgres::Error| classify(&e, "reading the server's catalogs");
        // Markers of this cluster, any uid (the in-memory claim tells
        // Ours from Stale).
        let marker = format!("{MARKER_PREFIX}{} uid=", plan.marker.identity);

        let db_names = plan.database_names();
        let rows = client
            .query(DATABASES_SQL, &[&db_names, &marker])
            .await
            .map_err(err)?;
        let Some(first) = rows.first() else {
            return Err(ProviderError::transient(
                reasons::DATABASE_ERROR,
                "reading the server's catalogs: no row",
            ));
        };
        let version: String = first.try_get(0).map_err(err)?;
        let version_num: i32 = first.try_get(1).map_err(err)?;
        let admin: String = first.try_get(2).map_err(err)?;
        let read_passwords: bool = first.try_get(3).map_err(err)?;
        let mut dbs = BTreeMap::new();
        let mut db_acl: BTreeMap<String, BTreeMap<Option<String>, BTreeSet<String>>> =
            BTreeMap::new();
        for row in &rows {
            let Some(name) = row.try_get::<_, Option<String>>(4).map_err(err)? else {
                continue;
            };
            let comment: Option<String> = row.try_get(6).map_err(err)?;
            if !(db_names.contains(&name)
                || (marker_claim(plan, comment.as_deref()).is_ours() && plan.has_prefix(&name)))
            {
                continue;
            }
            let grantees: Vec<Option<String>> = array_or_empty(row, 7).map_err(err)?;
            let privileges: Vec<String> = array_or_empty(row, 8).map_err(err)?;
            let acl = db_acl.entry(name.clone()).or_default();
            for (grantee, privilege) in grantees.into_iter().zip(privileges) {
                acl.entry(grantee).or_default().insert(privilege);
            }
            if acl.is_empty() {
                db_acl.remove(&name);
            }
            dbs.insert(
                name,
                DbRow {
                    owner: row.try_get(5).map_err(err)?,
                    comment,
                },
            );
        }

        let names = plan.role_names();
        let rows = client
            .query(&roles_sql(read_passwords), &[&names, &marker])
            .await
            .map_err(err)?;
        let mut roles = BTreeMap::new();
        let mut member_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut role_settings: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut passwords = read_passwords.then(BTreeMap::new);
        for row in rows {
            let name: String = row.try_get(0).map_err(err)?;
            let comment: Option<String> = row.try_get(9).map_err(err)?;
            let row_claim = marker_claim(plan, comment.as_deref());
            // Keep the desired names, and this cluster's marked roles.
            if !(names.contains(&name) || (row_claim.is_ours() && plan.has_prefix(&name))) {
                continue;
            }
            let groups: Vec<String> = row.try_get(10).map_err(err)?;
            if !groups.is_empty() {
                member_of.insert(name.clone(), groups.into_iter().collect());
            }
            let role_members: Vec<String> = row.try_get(11).map_err(err)?;
            if !role_members.is_empty() {
                members.insert(name.clone(), role_members.into_iter().collect());
            }
            let setting_dbs: Vec<String> = array_or_empty(&row, 12).map_err(err)?;
            let setting_values: Vec<String> = array_or_empty(&row, 13).map_err(err)?;
            for (db, value) in setting_dbs.into_iter().zip(setting_values) {
                role_settings
                    .entry(name.clone())
                    .or_default()
                    .insert(db, value);
            }
            if let Some(passwords) = passwords.as_mut() {
                let stored: Option<String> = row.try_get(14).map_err(err)?;
                passwords.insert(name.clone(), stored.map(StoredVerifier));
            }
            roles.insert(
                name,
                RoleRow {
                    attrs: RoleAttrs {
                        login: row.try_get(1).map_err(err)?,
                        superuser: row.try_get(2).map_err(err)?,
                        createdb: row.try_get(3).map_err(err)?,
                        createrole: row.try_get(4).map_err(err)?,
                        replication: row.try_get(5).map_err(err)?,
                        bypassrls: row.try_get(6).map_err(err)?,
                        inherit: row.try_get(7).map_err(err)?,
                        connection_limit: row.try_get(8).map_err(err)?,
                    },
                    comment,
                },
            );
        }

        Ok(Inventory {
            version,
            version_num,
            admin,
            roles,
            dbs,
            db_acl,
            member_of,
            members,
            role_settings,
            passwords,
        })
    }

    pub fn role_claim(&self, plan: &Plan, name: &str) -> Claim {
        match self.roles.get(name) {
            None => Claim::Absent,
            Some(row) => marker_claim(plan, row.comment.as_deref()),
        }
    }

    pub fn db_claim(&self, plan: &Plan, name: &str) -> Claim {
        match self.dbs.get(name) {
            None => Claim::Absent,
            Some(row) => match marker_claim(plan, row.comment.as_deref()) {
                Claim::Foreign { marked: false }
                    if row.comment.is_none()
                        && plan.database(name).is_some()
                        && matches!(
                            self.role_claim(plan, &row.owner),
                            Claim::Ours | Claim::Stale
                        ) =>
                {
                    Claim::Adoptable
                }
                other => other,
            },
        }
    }

    /// Fails with NameConflict when any of the cluster's physical names is
    /// taken by an object bulkhead may not touch.
    pub fn check_conflicts(&self, plan: &Plan) -> Result<(), ProviderError> {
        let mut conflicts = Vec::new();
        let why = |marked: bool| {
            if marked {
                "belongs to another DatabaseCluster"
            } else {
                "exists and is not managed by bulkhead"
            }
        };
        for name in plan.role_names() {
            if let Claim::Foreign { marked } = self.role_claim(plan, &name) {
                conflicts.push(format!("role {name:?} {}", why(marked)));
            }
        }
        for name in plan.database_names() {
            if let Claim::Foreign { marked } = self.db_claim(plan, &name) {
                conflicts.push(format!("database {name:?} {}", why(marked)));
            }
        }
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(ProviderError::terminal(
                reasons::NAME_CONFLICT,
                format!(
                    "{}; bulkhead will not alter, grant on or drop objects it does not own (rename the cluster or the object)",
                    conflicts.join("; ")
                ),
            ))
        }
    }

    /// This cluster's marked roles that the spec no longer lists.
    pub fn extra_roles(&self, plan: &Plan) -> Vec<String> {
        extras(self.roles.keys(), &plan.role_names(), plan, |n| {
            self.role_claim(plan, n)
        })
    }

    /// This cluster's marked databases that the spec no longer lists.
    pub fn extra_dbs(&self, plan: &Plan) -> Vec<String> {
        extras(self.dbs.keys(), &plan.database_names(), plan, |n| {
            self.db_claim(plan, n)
        })
    }
}

/// The names among `present` that are not `wanted` but carry the cluster's
/// prefix and its marker (`claim` of the name is ours or stale).
fn extras<'a>(
    present: impl Iterator<Item = &'a String>,
    wanted: &[String],
    plan: &Plan,
    claim: impl Fn(&str) -> Claim,
) -> Vec<String> {
    present
        .filter(|n| !wanted.contains(n) && plan.has_prefix(n))
        .filter(|n| matches!(claim(n), Claim::Ours | Claim::Stale))
        .cloned()
        .collect()
}

/// Column `idx` of `row`, an array that may be NULL (read as empty).
fn array_or_empty<'a, T: FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<Vec<T>, tokio_postgres::Error> {
    Ok(row.try_get::<_, Option<Vec<T>>>(idx)?.unwrap_or_default())
}

/// An object inside one database whose privileges bulkhead manages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Object {
    Schema(String),
    /// schema, name, relkind.
    Relation(String, String, char),
}

impl Object {
    pub fn describe(&self) -> String {
        match self {
            Object::Schema(s) => format!("schema {s}"),
            Object::Relation(s, n, _) => format!("{s}.{n}"),
        }
    }
    pub fn is_sequence(&self) -> bool {
        matches!(self, Object::Relation(_, _, 'S'))
    }
}

/// Privileges inside one database.
#[derive(Clone, Debug, Default)]
pub struct DbInspection {
    /// Object → owner.
    pub objects: BTreeMap<Object, String>,
    /// (object, grantee) → direct privileges (the owner's own entry excluded).
    pub acl: BTreeMap<(Object, String), BTreeSet<String>>,
    /// (creator role, object type 'r' | 'S' | 'n', grantee) → default privileges.
    pub default_acl: BTreeMap<(String, char, String), BTreeSet<String>>,
    /// Whether the schema `public` exists.
    pub has_public: bool,
    pub public_create_by_public: bool,
    /// Whether the database's owner role can create in `public`.
    pub owner_creates_in_public: bool,
}

/// Schemas bulkhead manages privileges in: everything but the system ones.
pub const USER_SCHEMA_FILTER: &str =
    "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'";

fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or(' ')
}

/// Everything [`DbInspection`] holds, in one query: rows tagged `n`
/// (schema, owner), `c` (relation, owner), `na`/`ca` (a grantee's privilege
/// on a schema/relation), `d` (a default privilege) and one `p` row (the
/// `public` schema's state).
fn inspection_sql() -> String {
    let f = USER_SCHEMA_FILTER;
    format!(
        "
SELECT 'n'::text, n.nspname::text, NULL::text, NULL::text, pg_get_userbyid(n.nspowner)::text, NULL::text
  FROM pg_namespace n WHERE {f}
UNION ALL
SELECT 'c', n.nspname::text, c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner)::text, NULL
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {f}
UNION ALL
SELECT 'na', n.nspname::text, NULL, NULL, pg_get_userbyid(a.grantee)::text, a.privilege_type::text
  FROM pg_namespace n, aclexplode(n.nspacl) a
 WHERE {f} AND a.grantee <> n.nspowner AND pg_get_userbyid(a.grantee)::text = ANY($1::text[])
UNION ALL
SELECT 'ca', n.nspname::text, c.relname::text, c.relkind::text, pg_get_userbyid(a.grantee)::text, a.privilege_type::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {f}
   AND a.grantee <> c.relowner AND pg_get_userbyid(a.grantee)::text = ANY($1::text[])
UNION ALL
SELECT 'd', pg_get_userbyid(d.defaclrole)::text, d.defaclobjtype::text, NULL, pg_get_userbyid(a.grantee)::text, a.privilege_type::text
  FROM pg_default_acl d, aclexplode(d.defaclacl) a
 WHERE d.defaclnamespace = 0 AND a.grantee <> d.defaclrole
   AND pg_get_userbyid(a.grantee)::text = ANY($1::text[])
UNION ALL
SELECT 'p',
       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')::text,
       coalesce((SELECT bool_or(a.grantee = 0 AND a.privilege_type = 'CREATE')
                   FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                  WHERE n.nspname = 'public'), false)::text,
       (CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')
                  AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname::text = $2::text)
             THEN has_schema_privilege(($2::text)::name, 'public', 'CREATE') ELSE false END)::text,
       NULL, NULL"
    )
}

impl DbInspection {
    /// `grantees` are the roles whose privileges are reported; `owner` is
    /// the database's owner role. One query ([`inspection_sql`]).
    pub async fn load(
        client: &Session,
        grantees: &[String],
        owner: &str,
    ) -> Result<DbInspection, ProviderError> {
        let err = |e: tokio_postgres::Error| classify(&e, "reading a database's privileges");
        let mut out = DbInspection::default();
        let rows = client
            .query(&inspection_sql(), &[&grantees, &owner])
            .await
            .map_err(err)?;
        for row in rows {
            let text = |i: usize| -> Result<String, ProviderError> {
                row.try_get::<_, Option<String>>(i)
                    .map_err(err)
                    .map(Option::unwrap_or_default)
            };
            let kind = text(0)?;
            match kind.as_str() {
                "n" => {
                    out.objects.insert(Object::Schema(text(1)?), text(4)?);
                }
                "c" => {
                    out.objects.insert(
                        Object::Relation(text(1)?, text(2)?, first_char(&text(3)?)),
                        text(4)?,
                    );
                }
                "na" => {
                    out.acl
                        .entry((Object::Schema(text(1)?), text(4)?))
                        .or_default()
                        .insert(text(5)?);
                }
                "ca" => {
                    out.acl
                        .entry((
                            Object::Relation(text(1)?, text(2)?, first_char(&text(3)?)),
                            text(4)?,
                        ))
                        .or_default()
                        .insert(text(5)?);
                }
                "d" => {
                    out.default_acl
                        .entry((text(1)?, first_char(&text(2)?), text(4)?))
                        .or_default()
                        .insert(text(5)?);
                }
                "p" => {
                    out.has_public = text(1)? == "true";
                    out.public_create_by_public = text(2)? == "true";
                    out.owner_creates_in_public = text(3)? == "true";
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
