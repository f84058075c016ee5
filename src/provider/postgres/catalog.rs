//! Reading the server's catalogs: what exists of a cluster (roles,
//! databases, grants, memberships, per-role settings) and, inside one
//! database, the privileges on its schemas, tables and sequences.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::conn::classify;
use super::names::{Marker, NAME_CONFLICT, Plan};
use crate::provider::ProviderError;

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

impl Inventory {
    pub async fn load(client: &Client, plan: &Plan) -> Result<Inventory, ProviderError> {
        let err = |e: tokio_postgres::Error| classify(&e, "reading the server's catalogs");
        let row = client
            .query_one(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int4, current_user::text",
                &[],
            )
            .await
            .map_err(err)?;
        let version: String = row.get(0);
        let version_num: i32 = row.get(1);
        let admin: String = row.get(2);

        let names = plan.role_names();
        let rows = client
            .query(
                "SELECT r.rolname::text, r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication,
                        r.rolbypassrls, r.rolinherit, r.rolconnlimit, shobj_description(r.oid, 'pg_authid')
                   FROM pg_roles r
                  WHERE r.rolname::text = ANY($1::text[])
                     OR shobj_description(r.oid, 'pg_authid') LIKE 'bulkhead.dev/owner=%'",
                &[&names],
            )
            .await
            .map_err(err)?;
        let mut roles = BTreeMap::new();
        for row in rows {
            let name: String = row.get(0);
            let comment: Option<String> = row.get(9);
            let row_claim = marker_claim(plan, comment.as_deref());
            // Keep the desired names, and this cluster's marked roles.
            if names.contains(&name) || (row_claim.is_ours() && plan.has_prefix(&name)) {
                roles.insert(
                    name,
                    RoleRow {
                        attrs: RoleAttrs {
                            login: row.get(1),
                            superuser: row.get(2),
                            createdb: row.get(3),
                            createrole: row.get(4),
                            replication: row.get(5),
                            bypassrls: row.get(6),
                            inherit: row.get(7),
                            connection_limit: row.get(8),
                        },
                        comment,
                    },
                );
            }
        }

        let db_names = plan.database_names();
        let rows = client
            .query(
                "SELECT d.datname::text, pg_get_userbyid(d.datdba)::text, shobj_description(d.oid, 'pg_database')
                   FROM pg_database d
                  WHERE d.datname::text = ANY($1::text[])
                     OR shobj_description(d.oid, 'pg_database') LIKE 'bulkhead.dev/owner=%'",
                &[&db_names],
            )
            .await
            .map_err(err)?;
        let mut dbs = BTreeMap::new();
        for row in rows {
            let name: String = row.get(0);
            let comment: Option<String> = row.get(2);
            if db_names.contains(&name)
                || (marker_claim(plan, comment.as_deref()).is_ours() && plan.has_prefix(&name))
            {
                dbs.insert(
                    name,
                    DbRow {
                        owner: row.get(1),
                        comment,
                    },
                );
            }
        }

        let all_dbs: Vec<String> = dbs.keys().cloned().collect();
        let rows = client
            .query(
                "SELECT d.datname::text,
                        CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END,
                        a.privilege_type
                   FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                  WHERE d.datname::text = ANY($1::text[]) AND a.grantee <> d.datdba",
                &[&all_dbs],
            )
            .await
            .map_err(err)?;
        let mut db_acl: BTreeMap<String, BTreeMap<Option<String>, BTreeSet<String>>> =
            BTreeMap::new();
        for row in rows {
            db_acl
                .entry(row.get(0))
                .or_default()
                .entry(row.get(1))
                .or_default()
                .insert(row.get(2));
        }

        let all_roles: Vec<String> = roles.keys().cloned().collect();
        let rows = client
            .query(
                "SELECT r.rolname::text, m.rolname::text
                   FROM pg_auth_members am
                   JOIN pg_roles r ON r.oid = am.roleid
                   JOIN pg_roles m ON m.oid = am.member
                  WHERE r.rolname::text = ANY($1::text[]) OR m.rolname::text = ANY($1::text[])",
                &[&all_roles],
            )
            .await
            .map_err(err)?;
        let mut member_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in rows {
            let role: String = row.get(0);
            let member: String = row.get(1);
            member_of
                .entry(member.clone())
                .or_default()
                .insert(role.clone());
            members.entry(role).or_default().insert(member);
        }

        let rows = client
            .query(
                "SELECT r.rolname::text, coalesce(d.datname::text, ''), s.setconfig
                   FROM pg_db_role_setting s
                   JOIN pg_roles r ON r.oid = s.setrole
                   LEFT JOIN pg_database d ON d.oid = s.setdatabase
                  WHERE r.rolname::text = ANY($1::text[])",
                &[&all_roles],
            )
            .await
            .map_err(err)?;
        let mut role_settings: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for row in rows {
            let config: Option<Vec<String>> = row.get(2);
            for setting in config.unwrap_or_default() {
                if let Some(value) = setting.strip_prefix("role=") {
                    role_settings
                        .entry(row.get(0))
                        .or_default()
                        .insert(row.get(1), value.to_string());
                }
            }
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
                NAME_CONFLICT,
                format!(
                    "{}; bulkhead will not alter, grant on or drop objects it does not own (rename the cluster or the object)",
                    conflicts.join("; ")
                ),
            ))
        }
    }

    /// This cluster's marked roles that the spec no longer lists.
    pub fn extra_roles(&self, plan: &Plan) -> Vec<String> {
        let wanted = plan.role_names();
        self.roles
            .keys()
            .filter(|n| !wanted.contains(n) && plan.has_prefix(n))
            .filter(|n| matches!(self.role_claim(plan, n), Claim::Ours | Claim::Stale))
            .cloned()
            .collect()
    }

    /// This cluster's marked databases that the spec no longer lists.
    pub fn extra_dbs(&self, plan: &Plan) -> Vec<String> {
        let wanted = plan.database_names();
        self.dbs
            .keys()
            .filter(|n| !wanted.contains(n) && plan.has_prefix(n))
            .filter(|n| matches!(self.db_claim(plan, n), Claim::Ours | Claim::Stale))
            .cloned()
            .collect()
    }
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

impl DbInspection {
    /// `grantees` are the roles whose privileges are reported; `owner` is
    /// the database's owner role.
    pub async fn load(
        client: &Client,
        grantees: &[String],
        owner: &str,
    ) -> Result<DbInspection, ProviderError> {
        let err = |e: tokio_postgres::Error| classify(&e, "reading a database's privileges");
        let mut out = DbInspection::default();
        let rows = client
            .query(
                &format!(
                    "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text FROM pg_namespace n WHERE {USER_SCHEMA_FILTER}"
                ),
                &[],
            )
            .await
            .map_err(err)?;
        for row in rows {
            out.objects.insert(Object::Schema(row.get(0)), row.get(1));
        }
        let rows = client
            .query(
                &format!(
                    "SELECT n.nspname::text, c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner)::text
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_SCHEMA_FILTER}"
                ),
                &[],
            )
            .await
            .map_err(err)?;
        for row in rows {
            let kind: String = row.get(2);
            out.objects.insert(
                Object::Relation(row.get(0), row.get(1), first_char(&kind)),
                row.get(3),
            );
        }
        let rows = client
            .query(
                &format!(
                    "SELECT n.nspname::text, pg_get_userbyid(a.grantee)::text, a.privilege_type
                       FROM pg_namespace n, aclexplode(n.nspacl) a
                      WHERE {USER_SCHEMA_FILTER} AND a.grantee <> n.nspowner
                        AND pg_get_userbyid(a.grantee)::text = ANY($1::text[])"
                ),
                &[&grantees],
            )
            .await
            .map_err(err)?;
        for row in rows {
            out.acl
                .entry((Object::Schema(row.get(0)), row.get(1)))
                .or_default()
                .insert(row.get(2));
        }
        let rows = client
            .query(
                &format!(
                    "SELECT n.nspname::text, c.relname::text, c.relkind::text, pg_get_userbyid(a.grantee)::text, a.privilege_type
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
                      WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_SCHEMA_FILTER}
                        AND a.grantee <> c.relowner
                        AND pg_get_userbyid(a.grantee)::text = ANY($1::text[])"
                ),
                &[&grantees],
            )
            .await
            .map_err(err)?;
        for row in rows {
            let kind: String = row.get(2);
            out.acl
                .entry((
                    Object::Relation(row.get(0), row.get(1), first_char(&kind)),
                    row.get(3),
                ))
                .or_default()
                .insert(row.get(4));
        }
        let rows = client
            .query(
                "SELECT pg_get_userbyid(d.defaclrole)::text, d.defaclobjtype::text, pg_get_userbyid(a.grantee)::text, a.privilege_type
                   FROM pg_default_acl d, aclexplode(d.defaclacl) a
                  WHERE d.defaclnamespace = 0 AND a.grantee <> d.defaclrole
                    AND pg_get_userbyid(a.grantee)::text = ANY($1::text[])",
                &[&grantees],
            )
            .await
            .map_err(err)?;
        for row in rows {
            let kind: String = row.get(1);
            out.default_acl
                .entry((row.get(0), first_char(&kind), row.get(2)))
                .or_default()
                .insert(row.get(3));
        }
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public'),
                        coalesce((SELECT bool_or(a.grantee = 0 AND a.privilege_type = 'CREATE')
                                    FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                                   WHERE n.nspname = 'public'), false),
                        CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')
                                  AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname::text = $1::text)
                             THEN has_schema_privilege(($1::text)::name, 'public', 'CREATE') ELSE false END",
                &[&owner],
            )
            .await
            .map_err(err)?;
        out.has_public = row.get(0);
        out.public_create_by_public = row.get(1);
        out.owner_creates_in_public = row.get(2);
        Ok(out)
    }
}
