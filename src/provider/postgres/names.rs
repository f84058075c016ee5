//! Physical names of a cluster's objects on the shared server, the
//! ownership marker, and the effective access of every user to every
//! database. Pure: no I/O, and it trusts nothing in the desired state (the
//! CRD's validation may have been bypassed).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::database_cluster::Privileges;
use crate::provider::{DesiredDatabaseCluster, ProviderError, Secret};
use crate::reasons;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Marker comments start with this.
pub const MARKER_PREFIX: &str = "bulkhead.dev/owner=";

/// Suffix of the cluster's NOLOGIN group role.
const OWNER_ROLE_SUFFIX: &str = "owner";

/// Who owns an object: the DatabaseCluster's namespace/name, and the uid of
/// the incarnation that last wrote the marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// `namespace/name`.
    pub identity: String,
    pub uid: String,
}

impl Marker {
    /// The marker of the DatabaseCluster behind `desired` (its owner's
    /// namespace, else the desired state's).
    fn of(desired: &DesiredDatabaseCluster) -> Marker {
        let namespace = desired
            .owner
            .namespace
            .clone()
            .unwrap_or_else(|| desired.namespace.clone());
        Marker {
            identity: format!("{namespace}/{}", desired.owner.name),
            uid: desired.owner.uid.clone(),
        }
    }
}

impl Marker {
    /// The comment text bulkhead writes.
    pub fn comment(&self) -> String {
        format!("{MARKER_PREFIX}{} uid={}", self.identity, self.uid)
    }

    /// Parses a comment; `None` when it is not a bulkhead marker.
    pub fn parse(comment: &str) -> Option<Marker> {
        let rest = comment.strip_prefix(MARKER_PREFIX)?;
        let (identity, uid) = rest.rsplit_once(" uid=")?;
        Some(Marker {
            identity: identity.to_string(),
            uid: uid.to_string(),
        })
    }
}

/// How a login role may use one database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// CONNECT; USAGE on schemas; SELECT on tables (now and future).
    ReadOnly,
    /// CONNECT; USAGE on schemas; SELECT, INSERT, UPDATE, DELETE on tables;
    /// USAGE, SELECT, UPDATE on sequences (now and future).
    ReadWrite,
    /// CONNECT; member of the database's owner role, whose identity its
    /// sessions in that database assume (`SET role`), so what it creates is
    /// owned by the owner role and default privileges apply.
    Member,
    /// The role owns the database itself (`databases[].owner`).
    Owns,
}

impl Access {
    /// Privileges granted directly on tables/views.
    pub fn table_privileges(self) -> &'static [&'static str] {
        match self {
            Access::ReadOnly => &["SELECT"],
            Access::ReadWrite => &["SELECT", "INSERT", "UPDATE", "DELETE"],
            Access::Member | Access::Owns => &[],
        }
    }
    /// Privileges granted directly on sequences.
    pub fn sequence_privileges(self) -> &'static [&'static str] {
        match self {
            Access::ReadWrite => &["USAGE", "SELECT", "UPDATE"],
            _ => &[],
        }
    }
    /// Privileges granted directly on (non-system) schemas.
    pub fn schema_privileges(self) -> &'static [&'static str] {
        match self {
            Access::ReadOnly | Access::ReadWrite => &["USAGE"],
            _ => &[],
        }
    }
    /// Whether the role gets a direct CONNECT grant on the database.
    pub fn connects(self) -> bool {
        !matches!(self, Access::Owns)
    }
}

#[derive(Clone, Debug)]
pub struct DbPlan {
    pub logical: String,
    pub physical: String,
    /// Physical role that owns the database.
    pub owner: String,
}

#[derive(Clone, Debug)]
pub struct UserPlan {
    pub logical: String,
    pub physical: String,
    pub connection_limit: i32,
    pub password: Option<Secret>,
    /// Physical database → access.
    pub access: BTreeMap<String, Access>,
}

/// Everything a cluster should be on the server.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `external_name` with '-' replaced by '_'.
    pub prefix: String,
    pub marker: Marker,
    /// The NOLOGIN group role `<prefix>_owner`.
    pub owner_role: String,
    pub databases: Vec<DbPlan>,
    pub users: Vec<UserPlan>,
}

fn check_name(kind: &str, name: &str) -> Result<(), ProviderError> {
    if name.is_empty() {
        return Err(ProviderError::terminal(
            reasons::INVALID_NAME,
            format!("{kind} name is empty"),
        ));
    }
    if name.contains('\0') {
        return Err(ProviderError::terminal(
            reasons::INVALID_NAME,
            format!("{kind} name {name:?} contains a NUL character"),
        ));
    }
    Ok(())
}

fn physical(prefix: &str, kind: &str, name: &str) -> Result<String, ProviderError> {
    let physical = format!("{prefix}_{name}");
    if physical.len() > MAX_IDENTIFIER_BYTES {
        return Err(ProviderError::terminal(
            reasons::NAME_TOO_LONG,
            format!(
                "{kind} {name:?} would be named {physical:?} on the server, {} bytes; PostgreSQL allows {MAX_IDENTIFIER_BYTES} (shorten the {kind} name or the cluster name)",
                physical.len()
            ),
        ));
    }
    Ok(physical)
}

/// Checks a declared name, and that it is not listed twice: `seen` holds
/// the names of its kind before it.
fn check_unique<'a>(
    seen: &mut BTreeSet<&'a str>,
    what: &str,
    name: &'a str,
) -> Result<(), ProviderError> {
    check_name(what, name)?;
    if !seen.insert(name) {
        return Err(ProviderError::terminal(
            reasons::INVALID_SPEC,
            format!("{what} {name:?} is listed twice"),
        ));
    }
    Ok(())
}

impl Plan {
    /// Validates `desired` and derives its physical layout.
    pub fn new(desired: &DesiredDatabaseCluster) -> Result<Plan, ProviderError> {
        check_name("cluster external", &desired.external_name)?;
        let prefix = desired.external_name.replace('-', "_");
        let marker = Marker::of(desired);
        let owner_role = physical(&prefix, "owner role", OWNER_ROLE_SUFFIX)?;

        let mut seen = BTreeSet::new();
        let mut databases = Vec::new();
        for db in &desired.databases {
            check_unique(&mut seen, "database", &db.name)?;
            let physical = physical(&prefix, "database", &db.name)?;
            let owner = match &db.owner {
                None => owner_role.clone(),
                Some(user) => {
                    if !desired.users.iter().any(|u| &u.name == user) {
                        return Err(ProviderError::terminal(
                            reasons::INVALID_SPEC,
                            format!(
                                "database {:?} names owner {user:?}, which is not in spec.users",
                                db.name
                            ),
                        ));
                    }
                    physical_user(&prefix, user)?
                }
            };
            databases.push(DbPlan {
                logical: db.name.clone(),
                physical,
                owner,
            });
        }

        let mut seen = BTreeSet::new();
        let mut users = Vec::new();
        for user in &desired.users {
            check_unique(&mut seen, "user", &user.name)?;
            let physical = physical_user(&prefix, &user.name)?;
            let connection_limit = user.connection_limit.unwrap_or(-1);
            if connection_limit < -1 {
                return Err(ProviderError::terminal(
                    reasons::INVALID_SPEC,
                    format!("user {:?}: connectionLimit must be -1 or more", user.name),
                ));
            }
            let mut access = BTreeMap::new();
            for name in &user.databases {
                let Some(db) = databases.iter().find(|d| &d.logical == name) else {
                    return Err(ProviderError::terminal(
                        reasons::INVALID_SPEC,
                        format!(
                            "user {:?} lists database {name:?}, which is not in this cluster's spec.databases",
                            user.name
                        ),
                    ));
                };
                let a = match user.privileges {
                    Privileges::ReadOnly => Access::ReadOnly,
                    Privileges::ReadWrite => Access::ReadWrite,
                    Privileges::Owner => Access::Member,
                };
                access.insert(db.physical.clone(), a);
            }
            // Owning a database trumps whatever the user's privileges say there.
            for db in databases.iter().filter(|d| d.owner == physical) {
                access.insert(db.physical.clone(), Access::Owns);
            }
            users.push(UserPlan {
                logical: user.name.clone(),
                physical,
                connection_limit,
                password: desired.passwords.get(&user.name).cloned(),
                access,
            });
        }
        Ok(Plan {
            prefix,
            marker,
            owner_role,
            databases,
            users,
        })
    }

    /// Just enough to find a cluster's marked objects when its spec no
    /// longer validates (so a delete is never blocked by a bad spec).
    pub fn for_cleanup(desired: &DesiredDatabaseCluster) -> Plan {
        let prefix = desired.external_name.replace('-', "_");
        Plan {
            owner_role: format!("{prefix}_{OWNER_ROLE_SUFFIX}"),
            prefix,
            marker: Marker::of(desired),
            databases: Vec::new(),
            users: Vec::new(),
        }
    }

    /// Every role the cluster wants, group role first.
    pub fn role_names(&self) -> Vec<String> {
        std::iter::once(self.owner_role.clone())
            .chain(self.users.iter().map(|u| u.physical.clone()))
            .collect()
    }

    pub fn database_names(&self) -> Vec<String> {
        self.databases.iter().map(|d| d.physical.clone()).collect()
    }

    /// Whether a physical name belongs to this cluster's namespace of names.
    pub fn has_prefix(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with('_') && rest.len() > 1)
    }

    pub fn database(&self, physical: &str) -> Option<&DbPlan> {
        self.databases.iter().find(|d| d.physical == physical)
    }

    /// Roles a login role must be a member of: the owner role of each
    /// database it has `owner` privileges on (but does not own itself).
    pub fn memberships(&self, user: &UserPlan) -> BTreeSet<String> {
        user.access
            .iter()
            .filter(|(_, a)| **a == Access::Member)
            .filter_map(|(db, _)| self.database(db).map(|d| d.owner.clone()))
            .filter(|owner| owner != &user.physical)
            .collect()
    }

    /// Per database, the role whose identity a Member user assumes there.
    pub fn role_settings(&self, user: &UserPlan) -> BTreeMap<String, String> {
        user.access
            .iter()
            .filter(|(_, a)| **a == Access::Member)
            .filter_map(|(db, _)| self.database(db).map(|d| (db.clone(), d.owner.clone())))
            .filter(|(_, owner)| owner != &user.physical)
            .collect()
    }
}

fn physical_user(prefix: &str, user: &str) -> Result<String, ProviderError> {
    check_name("user", user)?;
    if user == OWNER_ROLE_SUFFIX {
        return Err(ProviderError::terminal(
            reasons::INVALID_NAME,
            format!(
                "user name {user:?} is reserved: {prefix}_{OWNER_ROLE_SUFFIX} is the cluster's owner group role"
            ),
        ));
    }
    physical(prefix, "user", user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database_cluster::{DatabaseSpec, UserSpec};

    fn desired(
        external: &str,
        dbs: &[(&str, Option<&str>)],
        users: &[(&str, &[&str], Privileges)],
    ) -> DesiredDatabaseCluster {
        DesiredDatabaseCluster {
            databases: dbs
                .iter()
                .map(|(n, o)| DatabaseSpec {
                    name: n.to_string(),
                    owner: o.map(str::to_string),
                })
                .collect(),
            users: users
                .iter()
                .map(|(n, d, p)| UserSpec {
                    name: n.to_string(),
                    databases: d.iter().map(|s| s.to_string()).collect(),
                    privileges: *p,
                    connection_limit: None,
                })
                .collect(),
            ..crate::provider::test_desired(external)
        }
    }

    #[test]
    fn names_are_prefixed() {
        let d = desired(
            "my-app-db-stage",
            &[("main", None), ("side", Some("alice"))],
            &[
                ("alice", &["main"], Privileges::Owner),
                ("bob", &["main", "side"], Privileges::ReadOnly),
            ],
        );
        let plan = Plan::new(&d).expect("valid");
        assert_eq!(plan.prefix, "my_app_db_stage");
        assert_eq!(plan.owner_role, "my_app_db_stage_owner");
        assert_eq!(plan.databases[0].physical, "my_app_db_stage_main");
        assert_eq!(plan.databases[0].owner, "my_app_db_stage_owner");
        assert_eq!(plan.databases[1].owner, "my_app_db_stage_alice");
        let alice = &plan.users[0];
        assert_eq!(
            alice.access.get("my_app_db_stage_main"),
            Some(&Access::Member)
        );
        assert_eq!(
            alice.access.get("my_app_db_stage_side"),
            Some(&Access::Owns)
        );
        assert_eq!(
            plan.memberships(alice).into_iter().collect::<Vec<_>>(),
            vec!["my_app_db_stage_owner"]
        );
        assert_eq!(plan.marker.comment(), "bulkhead.dev/owner=team/app uid=u-1");
        assert_eq!(
            Marker::parse(&plan.marker.comment()),
            Some(plan.marker.clone())
        );
        assert!(plan.has_prefix("my_app_db_stage_x"));
        assert!(!plan.has_prefix("my_app_db_stagex"));
    }

    #[test]
    fn rejects_bad_input() {
        // "c_" + 61 bytes = 63: the limit; one more byte is refused.
        let fits = "x".repeat(61);
        Plan::new(&desired("c", &[(&fits, None)], &[])).expect("63 bytes fit");
        let long = "x".repeat(62);
        let err = Plan::new(&desired("c", &[(&long, None)], &[])).expect_err("too long");
        assert_eq!(err.reason(), reasons::NAME_TOO_LONG);
        // Bytes, not characters.
        let multibyte = "é".repeat(31);
        let err =
            Plan::new(&desired("c", &[(&multibyte, None)], &[])).expect_err("62 chars, 64 bytes");
        assert_eq!(err.reason(), reasons::NAME_TOO_LONG);
        let err = Plan::new(&desired(
            "c",
            &[("a", None)],
            &[("u", &["zzz"], Privileges::ReadOnly)],
        ))
        .expect_err("unknown db");
        assert_eq!(err.reason(), reasons::INVALID_SPEC);
        let err = Plan::new(&desired("c", &[], &[("owner", &[], Privileges::ReadOnly)]))
            .expect_err("reserved");
        assert_eq!(err.reason(), reasons::INVALID_NAME);
        let err = Plan::new(&desired("c", &[("a\0b", None)], &[])).expect_err("nul");
        assert_eq!(err.reason(), reasons::INVALID_NAME);
        let err =
            Plan::new(&desired("c", &[("a", Some("ghost"))], &[])).expect_err("unknown owner");
        assert_eq!(err.reason(), reasons::INVALID_SPEC);
    }
}
