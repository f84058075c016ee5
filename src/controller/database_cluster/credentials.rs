//! The two Secrets a DatabaseCluster's controller writes itself: the
//! generated passwords (`<name>-credentials`) and the connection Secret
//! (`spec.writeConnectionSecretToRef`). Deciding what they hold is pure
//! ([`plan_passwords`], [`credentials_secret_child`],
//! [`connection_secret_child`]); writing goes through the same child-apply
//! helper as every other child ([`apply_secret`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::super::{Context, owner_of};
use crate::api::database_cluster::Endpoint;
use crate::api::{DatabaseCluster, LABEL_DATABASE_CLUSTER, LABEL_MANAGED_BY, MANAGER};
use crate::provider::kubernetes::Child;
use crate::provider::kubernetes::children::SECRET;
use crate::provider::{
    DatabaseClusterClient, DesiredDatabaseCluster, SUPERUSER, Secret, generate_password,
};
use crate::reasons;
use crate::reconcile::ReconcileError;

/// Key of the superuser password in the credentials Secret (user names
/// cannot start with '.').
const SUPERUSER_KEY: &str = ".superuser";
/// Annotation on the credentials Secret: when its passwords were generated.
const ANNOTATION_ROTATED_AT: &str = "bulkhead.dev/rotated-at";

/// Name of the Secret holding a cluster's generated passwords.
pub fn credentials_secret(name: &str) -> String {
    format!("{name}-credentials")
}

/// Whether a Secret in the cluster's namespace is one bulkhead made for
/// this DatabaseCluster (labels it always writes; a Secret somebody else
/// made is never written, adopted or deleted).
pub fn is_own_secret(secret: &KubeSecret, dbc: &DatabaseCluster) -> bool {
    let labels = secret.labels();
    labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER)
        && labels.get(LABEL_DATABASE_CLUSTER) == Some(&dbc.name_any())
}

fn secret_conflict(dbc: &DatabaseCluster, name: &str, role: &str) -> ReconcileError {
    ReconcileError::invalid(
        reasons::SECRET_CONFLICT,
        format!(
            "Secret {}/{name} already exists and was not made by bulkhead for DatabaseCluster {}; bulkhead never writes, adopts or deletes it: choose another name for the {role}, or remove that Secret",
            dbc.namespace().unwrap_or_default(),
            dbc.name_any()
        ),
    )
}

/// Reads the Secret `name` of the cluster's namespace, refusing one that
/// bulkhead did not make for this cluster (`role` says what it was to be).
pub async fn read_own_secret(
    dbc: &DatabaseCluster,
    ctx: &Context,
    name: &str,
    role: &str,
) -> Result<Option<KubeSecret>, ReconcileError> {
    let api: Api<KubeSecret> =
        Api::namespaced(ctx.client.clone(), &dbc.namespace().unwrap_or_default());
    match api.get_opt(name).await? {
        Some(s) if !is_own_secret(&s, dbc) => Err(secret_conflict(dbc, name, role)),
        found => Ok(found),
    }
}

/// The cluster's passwords for this reconcile.
pub struct Passwords {
    /// Every declared user's password, plus the superuser's under
    /// [`SUPERUSER`].
    pub passwords: BTreeMap<String, Secret>,
    /// When they were generated (the rotation schedule counts from here).
    pub generated_at: Timestamp,
    /// Whether they differ from what the credentials Secret holds, so the
    /// Secret must be written before anything uses them.
    pub changed: bool,
    /// Whether the rotation schedule came due (not merely a user added):
    /// a backend that issues passwords rotates its own only then.
    pub rotated: bool,
}

/// What the credentials Secret should hold: the passwords it has, a new one
/// for every user without one, all new when rotation is due, none for users
/// no longer declared.
pub fn plan_passwords(
    dbc: &DatabaseCluster,
    existing: Option<&KubeSecret>,
    now: Timestamp,
) -> Passwords {
    let mut current: BTreeMap<String, Secret> = existing
        .and_then(|s| s.data.as_ref())
        .map(|d| {
            d.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Secret::new(String::from_utf8_lossy(&v.0).into_owned()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let rotated_at = existing
        .and_then(|s| s.annotations().get(ANNOTATION_ROTATED_AT).cloned())
        .and_then(|t| t.parse::<Timestamp>().ok());
    let rotate = match (&dbc.spec.password_rotation, rotated_at) {
        (Some(r), Some(at)) => {
            let interval = SignedDuration::try_from(std::time::Duration::from(r.interval))
                .unwrap_or(SignedDuration::MAX);
            at.checked_add(interval).is_ok_and(|due| due <= now)
        }
        _ => false,
    };
    let mut wanted: Vec<String> = dbc.spec.users.iter().map(|u| u.name.clone()).collect();
    wanted.push(SUPERUSER_KEY.to_string());
    let mut changed = rotate || existing.is_none();
    for user in &wanted {
        if rotate || !current.contains_key(user) {
            current.insert(user.clone(), generate_password());
            changed = true;
        }
    }
    let before = current.len();
    current.retain(|k, _| wanted.contains(k));
    changed |= before != current.len();
    let generated_at = match rotated_at {
        Some(at) if !rotate => at,
        _ => now,
    };
    if let Some(su) = current.remove(SUPERUSER_KEY) {
        current.insert(SUPERUSER.to_string(), su);
    }
    Passwords {
        passwords: current,
        generated_at,
        changed,
        rotated: rotate,
    }
}

/// A Secret child of the DatabaseCluster, labelled as one of its own.
fn secret_child(dbc: &DatabaseCluster, name: &str, mut fields: serde_json::Value) -> Child {
    let ns = dbc.namespace().unwrap_or_default();
    let labels = json!({ LABEL_DATABASE_CLUSTER: dbc.name_any() });
    match fields.get_mut("metadata") {
        Some(meta) => meta["labels"] = labels,
        None => fields["metadata"] = json!({ "labels": labels }),
    }
    fields["type"] = json!("Opaque");
    // These two Secrets belong to the controller: the provider, which
    // prunes the children it no longer wants, must never count them.
    Child::new(SECRET, Some(&ns), name, &owner_of(dbc), true, fields).unpruned()
}

/// The credentials Secret holding `passwords`.
pub fn credentials_secret_child(dbc: &DatabaseCluster, passwords: &Passwords) -> Child {
    let data: BTreeMap<&str, &str> = passwords
        .passwords
        .iter()
        .map(|(k, v)| {
            let key = if k == SUPERUSER { SUPERUSER_KEY } else { k };
            (key, v.expose())
        })
        .collect();
    secret_child(
        dbc,
        &credentials_secret(&dbc.name_any()),
        json!({
            "metadata": { "annotations": { ANNOTATION_ROTATED_AT: passwords.generated_at.to_string() } },
            "stringData": data,
        }),
    )
}

/// The connection Secret: the first declared user and its first database,
/// or the superuser where the backend runs its own server and no user is
/// declared. `None` when the spec asks for no connection Secret.
pub fn connection_secret_child(
    dbc: &DatabaseCluster,
    desired: &DesiredDatabaseCluster,
    client: &dyn DatabaseClusterClient,
    endpoint: &Endpoint,
) -> Result<Option<Child>, ReconcileError> {
    let Some(target) = &dbc.spec.write_connection_secret_to_ref else {
        return Ok(None);
    };
    let first_database = || {
        desired
            .databases
            .first()
            .map(|x| x.name.clone())
            .unwrap_or_else(|| "postgres".into())
    };
    let (user, password, database) = match desired.users.first() {
        Some(u) => (
            u.name.clone(),
            desired.passwords.get(&u.name),
            u.databases.first().cloned().unwrap_or_else(first_database),
        ),
        None if client.has_own_superuser() => (
            "postgres".to_string(),
            desired.passwords.get(SUPERUSER),
            first_database(),
        ),
        None => {
            return Err(ReconcileError::invalid(
                reasons::INVALID_SPEC,
                "writeConnectionSecretToRef needs at least one entry in spec.users",
            ));
        }
    };
    let (username, database) = client.connection_names(desired, &user, &database);
    let password = password.map(Secret::expose).unwrap_or_default();
    let uri = format!(
        "postgresql://{}:{}@{}:{}/{}",
        pct(&username),
        pct(password),
        endpoint.host,
        endpoint.port,
        pct(&database)
    );
    Ok(Some(secret_child(
        dbc,
        &target.name,
        json!({
            "stringData": {
                "host": endpoint.host,
                "port": endpoint.port.to_string(),
                "username": username,
                "password": password,
                "database": database,
                "uri": uri,
            },
        }),
    )))
}

/// Writes one of the cluster's Secrets, unless a Secret of that name exists
/// that bulkhead did not make for this cluster.
pub async fn apply_secret(
    dbc: &DatabaseCluster,
    ctx: &Context,
    child: &Child,
    role: &str,
) -> Result<(), ReconcileError> {
    read_own_secret(dbc, ctx, &child.name, role).await?;
    ctx.children.apply_child(child).await?;
    Ok(())
}

/// Percent-encodes a URI component.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::kubernetes::LABEL_OWNER_UID;
    use k8s_openapi::ByteString;

    fn cluster(users: &[&str], rotation: Option<&str>) -> DatabaseCluster {
        let users: Vec<_> = users
            .iter()
            .map(|u| json!({ "name": u, "privileges": "readWrite" }))
            .collect();
        let mut spec = json!({ "version": "16", "users": users });
        if let Some(interval) = rotation {
            spec["passwordRotation"] = json!({ "interval": interval });
        }
        serde_json::from_value(json!({
            "apiVersion": "bulkhead.dev/v1alpha1",
            "kind": "DatabaseCluster",
            "metadata": { "name": "app-db", "namespace": "team", "uid": "u-1" },
            "spec": spec,
        }))
        .expect("a valid DatabaseCluster")
    }

    fn stored(passwords: &[(&str, &str)], rotated_at: &str) -> KubeSecret {
        let mut s = KubeSecret::default();
        s.metadata.annotations =
            Some([(ANNOTATION_ROTATED_AT.to_string(), rotated_at.into())].into());
        s.data = Some(
            passwords
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    #[test]
    fn passwords_are_kept_added_and_dropped_with_the_users() {
        let dbc = cluster(&["app", "ro"], None);
        let first = plan_passwords(&dbc, None, ts("2026-01-01T00:00:00Z"));
        assert!(first.changed);
        assert_eq!(
            first.passwords.keys().collect::<Vec<_>>(),
            [SUPERUSER, "app", "ro"]
        );
        let existing = stored(
            &[
                ("app", "pw-app"),
                (".superuser", "pw-su"),
                ("gone", "pw-gone"),
            ],
            "2026-01-01T00:00:00Z",
        );
        let next = plan_passwords(&dbc, Some(&existing), ts("2026-02-01T00:00:00Z"));
        assert!(next.changed, "ro is new and gone is dropped");
        assert!(!next.rotated, "a user added is no rotation");
        assert_eq!(next.passwords["app"].expose(), "pw-app");
        assert_eq!(next.passwords[SUPERUSER].expose(), "pw-su");
        assert!(!next.passwords.contains_key("gone"));
        assert_eq!(next.generated_at, ts("2026-01-01T00:00:00Z"));

        let same = stored(
            &[("app", "a"), ("ro", "r"), (".superuser", "s")],
            "2026-01-01T00:00:00Z",
        );
        assert!(!plan_passwords(&dbc, Some(&same), ts("2026-02-01T00:00:00Z")).changed);
    }

    #[test]
    fn every_password_rotates_when_due_and_not_before() {
        let dbc = cluster(&["app"], Some("720h"));
        let existing = stored(
            &[("app", "old"), (".superuser", "old-su")],
            "2026-01-01T00:00:00Z",
        );
        let early = plan_passwords(&dbc, Some(&existing), ts("2026-01-30T23:00:00Z"));
        assert!(!early.changed && !early.rotated);
        assert_eq!(early.passwords["app"].expose(), "old");
        let due = plan_passwords(&dbc, Some(&existing), ts("2026-01-31T00:00:00Z"));
        assert!(due.changed && due.rotated);
        assert_ne!(due.passwords["app"].expose(), "old");
        assert_ne!(due.passwords[SUPERUSER].expose(), "old-su");
        assert_eq!(due.generated_at, ts("2026-01-31T00:00:00Z"));
    }

    #[test]
    fn the_credentials_secret_is_a_labelled_owned_child() {
        let dbc = cluster(&["app"], None);
        let existing = stored(
            &[("app", "pw"), (".superuser", "su")],
            "2026-01-01T00:00:00Z",
        );
        let passwords = plan_passwords(&dbc, Some(&existing), ts("2026-01-02T00:00:00Z"));
        let child = credentials_secret_child(&dbc, &passwords);
        assert_eq!(child.name, "app-db-credentials");
        let body = &child.body;
        assert_eq!(body["metadata"]["labels"][LABEL_DATABASE_CLUSTER], "app-db");
        assert_eq!(body["metadata"]["labels"][LABEL_MANAGED_BY], MANAGER);
        assert!(
            body["metadata"]["labels"].get(LABEL_OWNER_UID).is_none(),
            "not one of the provider's children, which it prunes"
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            body["metadata"]["annotations"][ANNOTATION_ROTATED_AT],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            body["stringData"],
            json!({ "app": "pw", ".superuser": "su" })
        );
    }

    #[test]
    fn uri_components_are_percent_encoded() {
        assert_eq!(pct("a b@c:d/e"), "a%20b%40c%3Ad%2Fe");
        assert_eq!(pct("my_app-db.x~"), "my_app-db.x~");
    }
}
