//! The `postgres` DatabaseCluster backend against a real PostgreSQL server:
//! what a user of the resulting databases sees (catalog rows, what each
//! login may and may not do), drift, rotation, hostile names, conflicts,
//! deletion, sanitized copies and an unavailable server.
//!
//! Every test uses its own external names, so they run in parallel on the
//! one shared server (the restart test has its own).

mod support;

use std::collections::{BTreeMap, BTreeSet};

use bulkhead::api::database_cluster::{CopyMode, DatabaseSpec, MaskAction, Privileges, Sanitize};
use bulkhead::provider::postgres::PostgresDatabaseClusters;
use bulkhead::provider::{
    CopyReport, CopyRequest, DatabaseClusterClient, DesiredDatabaseCluster, ExternalClient,
    Observation, ProviderError, Secret,
};
use bulkhead::reasons;
use support::desired::desired_cluster;
use support::postgres::{TestPostgres, shared};
use tokio_postgres::error::SqlState;

// ---------------------------------------------------------------- helpers

/// A testing-tier cluster with `databases` (name, owner) and `users`
/// (name, databases, privileges), each user with a generated password.
fn cluster(
    external: &str,
    databases: &[(&str, Option<&str>)],
    users: &[(&str, &[&str], Privileges)],
) -> DesiredDatabaseCluster {
    let mut d = desired_cluster(external);
    for (name, owner) in databases {
        d = d.database(name, *owner);
    }
    for (name, dbs, privileges) in users {
        d = d.user(name, dbs, *privileges);
    }
    d.build()
}

fn prefix(d: &DesiredDatabaseCluster) -> String {
    d.external_name.replace('-', "_")
}

fn phys(d: &DesiredDatabaseCluster, name: &str) -> String {
    format!("{}_{name}", prefix(d))
}

fn password(d: &DesiredDatabaseCluster, user: &str) -> String {
    d.passwords
        .get(user)
        .expect("password in desired")
        .expose()
        .to_string()
}

fn provider(pg: &TestPostgres) -> PostgresDatabaseClusters {
    PostgresDatabaseClusters::from_connection_string(&pg.admin_dsn()).expect("admin DSN parses")
}

/// Runs `sql` as cluster user `user` in cluster database `db`.
async fn sql_as(
    pg: &TestPostgres,
    d: &DesiredDatabaseCluster,
    user: &str,
    db: &str,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    pg.sql_as(&phys(d, user), &password(d, user), &phys(d, db), sql)
        .await
}

/// Whether user `user` of `from` may log in to database `db` of `to`.
async fn connect(
    pg: &TestPostgres,
    from: &DesiredDatabaseCluster,
    user: &str,
    to: &DesiredDatabaseCluster,
    db: &str,
) -> Result<(), tokio_postgres::Error> {
    pg.sql_as(
        &phys(from, user),
        &password(from, user),
        &phys(to, db),
        "SELECT 1",
    )
    .await
}

/// Runs each `(user, database, SQL, allowed)` in cluster `d`: allowed ones
/// must succeed, the others be refused for want of a privilege.
async fn assert_rights(
    pg: &TestPostgres,
    d: &DesiredDatabaseCluster,
    rights: &[(&str, &str, &str, bool)],
) {
    for (user, db, sql, allowed) in rights {
        let what = format!("{user} in {db}: {sql}");
        let result = sql_as(pg, d, user, db, sql).await;
        if *allowed {
            assert_allowed(result, &what);
        } else {
            assert_denied(result, &what);
        }
    }
}

fn assert_denied(result: Result<(), tokio_postgres::Error>, what: &str) {
    match result {
        Ok(()) => panic!("{what}: expected permission denied, but it succeeded"),
        Err(e) => assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{what}: expected permission denied, got {e:?}"
        ),
    }
}

fn assert_allowed(result: Result<(), tokio_postgres::Error>, what: &str) {
    if let Err(e) = result {
        panic!("{what}: expected success, got {e:?}");
    }
}

async fn expect_exists(
    p: &PostgresDatabaseClusters,
    d: &DesiredDatabaseCluster,
) -> (bool, Vec<String>) {
    match p.observe(d).await.expect("observe") {
        Observation::Missing => panic!("observe says Missing for {}", d.external_name),
        Observation::Exists {
            up_to_date,
            drift,
            readiness,
            ..
        } => {
            if up_to_date {
                assert!(readiness.ready, "up to date but not ready: {readiness:?}");
            }
            (up_to_date, drift)
        }
    }
}

async fn assert_up_to_date(p: &PostgresDatabaseClusters, d: &DesiredDatabaseCluster) {
    let (up_to_date, drift) = expect_exists(p, d).await;
    assert!(
        up_to_date,
        "{} should be up to date, drift: {drift:#?}",
        d.external_name
    );
    assert!(drift.is_empty());
}

async fn scalar_i64(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

async fn names_with_prefix(
    pg: &TestPostgres,
    prefix: &str,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let admin = pg.admin("postgres").await;
    let pattern = format!("{}\\_%", prefix.replace('_', "\\_"));
    let dbs = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1",
            &[&pattern],
        )
        .await
        .expect("list databases")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let roles = admin
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1",
            &[&pattern],
        )
        .await
        .expect("list roles")
        .iter()
        .map(|r| r.get(0))
        .collect();
    (dbs, roles)
}

fn terminal_reason(result: Result<impl std::fmt::Debug, ProviderError>) -> &'static str {
    match result {
        Err(ProviderError::Terminal { reason, .. }) => reason,
        other => panic!("expected a Terminal error, got {other:?}"),
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn create_gives_each_user_exactly_its_privileges() {
    let pg = shared().await;
    let p = provider(pg);
    let d = cluster(
        "lp-app",
        &[("main", None), ("side", None)],
        &[
            ("own", &["main"], Privileges::Owner),
            ("rw", &["main"], Privileges::ReadWrite),
            ("ro", &["main"], Privileges::ReadOnly),
        ],
    );
    let other = cluster(
        "lp-other",
        &[("main", None)],
        &[("x", &["main"], Privileges::Owner)],
    );
    assert!(matches!(
        p.observe(&d).await.expect("observe"),
        Observation::Missing
    ));
    p.create(&d).await.expect("create");
    p.create(&other).await.expect("create the other tenant");
    // Idempotent.
    p.create(&d).await.expect("create again");

    // Catalogs: databases owned by the group role, with the marker.
    let admin = pg.admin("postgres").await;
    for db in ["main", "side"] {
        let row = admin
            .query_one(
                "SELECT pg_get_userbyid(datdba)::text, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                &[&phys(&d, db)],
            )
            .await
            .expect("database exists");
        assert_eq!(row.get::<_, String>(0), "lp_app_owner");
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            Some("bulkhead.dev/owner=tests/lp-app uid=uid-lp-app")
        );
    }
    let roles = admin
        .query(
            "SELECT rolname::text, rolcanlogin, rolsuper OR rolcreatedb OR rolcreaterole OR rolbypassrls,
                    shobj_description(oid, 'pg_authid')
               FROM pg_roles WHERE rolname::text LIKE 'lp\\_app\\_%' ORDER BY 1",
            &[],
        )
        .await
        .expect("roles");
    let summary: Vec<(String, bool, bool)> = roles
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("lp_app_own".to_string(), true, false),
            ("lp_app_owner".to_string(), false, false),
            ("lp_app_ro".to_string(), true, false),
            ("lp_app_rw".to_string(), true, false),
        ]
    );
    assert!(roles.iter().all(|r| {
        r.get::<_, Option<String>>(3)
            .is_some_and(|c| c.starts_with("bulkhead.dev/owner=tests/lp-app "))
    }));

    // The owner creates schema objects; they belong to the group role.
    assert_allowed(
        sql_as(pg, &d, "own", "main", "CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) VALUES ('a')").await,
        "owner creates a table",
    );
    let main = pg.admin(&phys(&d, "main")).await;
    let owner: String = main
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = 'items'",
            &[],
        )
        .await
        .expect("table")
        .get(0);
    assert_eq!(owner, "lp_app_owner");

    // readOnly reads the table created after its grants (default
    // privileges), nothing else; readWrite: DML including sequences, no
    // DDL.
    assert_rights(
        pg,
        &d,
        &[
            ("ro", "main", "SELECT * FROM items", true),
            ("ro", "main", "INSERT INTO items (name) VALUES ('x')", false),
            ("ro", "main", "UPDATE items SET name = 'y'", false),
            ("ro", "main", "CREATE TABLE ro_t (a int)", false),
            (
                "rw",
                "main",
                "INSERT INTO items (name) VALUES ('b'); UPDATE items SET name = 'c' WHERE name = 'b'; DELETE FROM items WHERE name = 'c'",
                true,
            ),
            ("rw", "main", "CREATE TABLE rw_t (a int)", false),
            ("rw", "main", "DROP TABLE items", false),
            ("rw", "main", "TRUNCATE items", false),
            ("rw", "main", "CREATE SCHEMA rw_s", false),
        ],
    )
    .await;

    // Connections: only listed databases of the own cluster.
    for ((from, user), (to, db), what) in [
        (
            (&d, "ro"),
            (&d, "side"),
            "ro connects to a database it is not listed for",
        ),
        (
            (&d, "own"),
            (&other, "main"),
            "a user connects to another cluster's database",
        ),
        (
            (&other, "x"),
            (&d, "main"),
            "another cluster's owner connects to this cluster's database",
        ),
    ] {
        assert_denied(connect(pg, from, user, to, db).await, what);
    }
    // PUBLIC cannot connect: any other login role is refused.
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS lp_outsider; CREATE ROLE lp_outsider LOGIN PASSWORD 'outsider-pw'",
        )
        .await
        .expect("create outsider");
    assert_denied(
        pg.sql_as("lp_outsider", "outsider-pw", &phys(&d, "main"), "SELECT 1")
            .await,
        "PUBLIC connects",
    );
    // And PUBLIC cannot create in schema public.
    let public_create: bool = main
        .query_one(
            "SELECT has_schema_privilege('lp_outsider', 'public', 'CREATE')",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert!(!public_create);

    // Observe sees what it made, tables created since included.
    let Observation::Exists {
        up_to_date,
        drift,
        readiness,
        observed,
    } = p.observe(&d).await.expect("observe")
    else {
        panic!("missing after create");
    };
    assert!(up_to_date, "drift after create: {drift:#?}");
    assert!(readiness.ready);
    let endpoint = observed.endpoint.expect("endpoint");
    assert_eq!(
        (endpoint.host.as_str(), endpoint.port),
        ("127.0.0.1", i32::from(pg.port()))
    );
    assert_eq!((observed.replicas_desired, observed.replicas_ready), (1, 1));
    assert!(
        observed
            .version
            .expect("version")
            .starts_with(char::is_numeric)
    );
}

#[tokio::test]
async fn explicit_owner_owns_its_database_alone() {
    let pg = shared().await;
    let p = provider(pg);
    let d = cluster(
        "eo-app",
        &[("shared", None), ("private", Some("alice"))],
        &[
            ("alice", &["private"], Privileges::ReadOnly),
            ("bob", &["shared", "private"], Privileges::ReadOnly),
        ],
    );
    p.create(&d).await.expect("create");
    let admin = pg.admin("postgres").await;
    let owner: String = admin
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
            &[&phys(&d, "private")],
        )
        .await
        .expect("db")
        .get(0);
    assert_eq!(owner, "eo_app_alice");
    // alice owns "private" (DDL allowed) but has no way into "shared".
    assert_allowed(
        sql_as(pg, &d, "alice", "private", "CREATE TABLE notes (t text)").await,
        "explicit owner DDL",
    );
    assert_denied(
        connect(pg, &d, "alice", &d, "shared").await,
        "explicit owner connects to the other database",
    );
    let member: bool = admin
        .query_one(
            "SELECT pg_has_role('eo_app_alice', 'eo_app_owner', 'MEMBER')",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert!(
        !member,
        "the explicit owner must not be a member of the cluster's group role"
    );
    // bob reads alice's later tables in her database.
    assert_allowed(
        sql_as(pg, &d, "bob", "private", "SELECT * FROM notes").await,
        "readOnly reads the owner's table",
    );
    assert_denied(
        sql_as(pg, &d, "bob", "private", "INSERT INTO notes VALUES ('x')").await,
        "readOnly writes",
    );
    assert_up_to_date(&p, &d).await;
}

#[tokio::test]
async fn observe_reports_drift_and_update_converges() {
    let pg = shared().await;
    let p = provider(pg);
    let mut d = cluster(
        "drift-app",
        &[("main", None)],
        &[
            ("own", &["main"], Privileges::Owner),
            ("ro", &["main"], Privileges::ReadOnly),
            ("gone", &["main"], Privileges::ReadWrite),
        ],
    );
    p.create(&d).await.expect("create");
    assert_allowed(
        sql_as(pg, &d, "own", "main", "CREATE TABLE t (a int)").await,
        "owner DDL",
    );
    assert_up_to_date(&p, &d).await;

    // Someone widens privileges behind bulkhead's back.
    let main = pg.admin(&phys(&d, "main")).await;
    main.batch_execute("GRANT INSERT ON t TO drift_app_ro; GRANT CREATE ON SCHEMA public TO drift_app_ro; ALTER ROLE drift_app_ro CREATEDB")
        .await
        .expect("tamper");
    let (up_to_date, drift) = expect_exists(&p, &d).await;
    assert!(!up_to_date);
    assert!(
        drift
            .iter()
            .any(|l| l.contains("user ro") && l.contains("public.t")),
        "{drift:#?}"
    );
    assert!(drift.iter().any(|l| l.contains("CREATEDB")), "{drift:#?}");
    p.update(&d, &Default::default()).await.expect("update");
    assert_up_to_date(&p, &d).await;
    assert_denied(
        sql_as(pg, &d, "ro", "main", "INSERT INTO t VALUES (1)").await,
        "revoked INSERT",
    );
    assert_denied(
        sql_as(pg, &d, "ro", "main", "CREATE TABLE x (a int)").await,
        "revoked CREATE",
    );

    // Spec changes: ro becomes readWrite, a database is added, a user removed.
    d.users
        .iter_mut()
        .find(|u| u.name == "ro")
        .expect("ro")
        .privileges = Privileges::ReadWrite;
    d.databases.push(DatabaseSpec {
        name: "extra".into(),
        owner: None,
    });
    d.users.retain(|u| u.name != "gone");
    d.passwords.remove("gone");
    let (up_to_date, drift) = expect_exists(&p, &d).await;
    assert!(!up_to_date);
    assert!(
        drift
            .iter()
            .any(|l| l.contains("drift_app_extra") && l.contains("missing")),
        "{drift:#?}"
    );
    assert!(
        drift
            .iter()
            .any(|l| l.contains("drift_app_gone") && l.contains("no longer")),
        "{drift:#?}"
    );
    assert!(drift.iter().any(|l| l.contains("user ro")), "{drift:#?}");
    match p.observe(&d).await.expect("observe") {
        Observation::Exists { readiness, .. } => {
            assert!(!readiness.ready, "a missing database is not ready")
        }
        Observation::Missing => panic!("missing"),
    }
    p.update(&d, &Default::default()).await.expect("update");
    assert_up_to_date(&p, &d).await;
    assert_allowed(
        sql_as(pg, &d, "ro", "main", "INSERT INTO t VALUES (1)").await,
        "now readWrite",
    );
    let (dbs, roles) = names_with_prefix(pg, "drift_app").await;
    assert!(dbs.contains("drift_app_extra"));
    assert!(!roles.contains("drift_app_gone"), "{roles:?}");
    assert!(roles.contains("drift_app_own"));

    // A create that crashed between CREATE DATABASE and COMMENT: the
    // database has no marker but is owned by the cluster's marked role, so
    // it is adopted (not a conflict) and the marker is written.
    let admin = pg.admin("postgres").await;
    admin
        .batch_execute("COMMENT ON DATABASE drift_app_extra IS NULL")
        .await
        .expect("drop the marker");
    let (up_to_date, drift) = expect_exists(&p, &d).await;
    assert!(!up_to_date);
    assert!(
        drift
            .iter()
            .any(|l| l.contains("drift_app_extra") && l.contains("marker")),
        "{drift:#?}"
    );
    p.update(&d, &Default::default()).await.expect("update");
    assert_up_to_date(&p, &d).await;

    // The same DatabaseCluster re-created (new uid, e.g. after an Orphan
    // delete) adopts its objects and rewrites the markers.
    d.owner.uid = "uid-drift-app-2".into();
    let (up_to_date, drift) = expect_exists(&p, &d).await;
    assert!(!up_to_date);
    assert!(
        drift.iter().any(|l| l.contains("earlier incarnation")),
        "{drift:#?}"
    );
    p.update(&d, &Default::default()).await.expect("update");
    assert_up_to_date(&p, &d).await;
    let marker: Option<String> = admin
        .query_one(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = 'drift_app_owner'",
            &[],
        )
        .await
        .expect("owner role")
        .get(0);
    assert_eq!(
        marker.as_deref(),
        Some("bulkhead.dev/owner=tests/drift-app uid=uid-drift-app-2")
    );
}

#[tokio::test]
async fn password_rotation() {
    let pg = shared().await;
    let p = provider(pg);
    let mut d = cluster(
        "rot-app",
        &[("main", None)],
        &[("app", &["main"], Privileges::ReadWrite)],
    );
    p.create(&d).await.expect("create");
    let old = password(&d, "app");
    // What the connection Secret would hold logs in.
    let details = p.connection_details(&d, "app").expect("details");
    assert_eq!(
        (
            details.username.as_str(),
            details.database.as_deref(),
            details.port
        ),
        ("rot_app_app", Some("rot_app_main"), pg.port())
    );
    assert_eq!(details.sslmode, "disable");
    assert_allowed(
        pg.sql_as(
            &details.username,
            &old,
            details.database.as_deref().expect("db"),
            "SELECT 1",
        )
        .await,
        "login with the connection details",
    );
    assert_allowed(
        sql_as(pg, &d, "app", "main", "SELECT 1").await,
        "login with the first password",
    );
    assert_up_to_date(&p, &d).await;

    // The password never appears in SQL: the server stores a SCRAM verifier.
    let admin = pg.admin("postgres").await;
    let stored: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'rot_app_app'",
            &[],
        )
        .await
        .expect("authid")
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"));
    assert!(!stored.contains(&old));

    let new = Secret::new("rotated-Password-2");
    d.passwords.insert("app".into(), new.clone());
    let (up_to_date, drift) = expect_exists(&p, &d).await;
    assert!(!up_to_date);
    assert_eq!(drift, vec!["password of user app".to_string()]);
    assert!(
        drift
            .iter()
            .all(|l| !l.contains(&old) && !l.contains(new.expose()))
    );
    p.update(&d, &Default::default()).await.expect("update");
    let refused = pg
        .sql_as("rot_app_app", &old, "rot_app_main", "SELECT 1")
        .await
        .expect_err("old password refused");
    assert_eq!(refused.code(), Some(&SqlState::INVALID_PASSWORD));
    assert_allowed(
        sql_as(pg, &d, "app", "main", "SELECT 1").await,
        "login with the new password",
    );
    assert_up_to_date(&p, &d).await;
}

#[tokio::test]
async fn password_changed_behind_bulkheads_back_is_found_and_repaired() {
    let pg = shared().await;
    let p = provider(pg);
    let d = cluster(
        "pwdrift-app",
        &[("main", None)],
        &[
            ("app", &["main"], Privileges::ReadWrite),
            ("md5", &["main"], Privileges::ReadOnly),
        ],
    );
    p.create(&d).await.expect("create");
    assert_up_to_date(&p, &d).await;
    let admin = pg.admin("postgres").await;

    // The same password set again by someone else: the server computes a
    // new verifier (another salt; here even MD5), which still matches.
    let same = password(&d, "app");
    admin
        .batch_execute(&format!(
            "ALTER ROLE pwdrift_app_app PASSWORD '{same}'; SET password_encryption = 'md5'; ALTER ROLE pwdrift_app_md5 PASSWORD '{}'",
            password(&d, "md5")
        ))
        .await
        .expect("set the same passwords");
    let stored: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'pwdrift_app_md5'",
            &[],
        )
        .await
        .expect("authid")
        .get(0);
    assert!(stored.starts_with("md5"), "an MD5 verifier");
    assert_up_to_date(&p, &d).await;

    // A different password, behind bulkhead's back: the next observe says so.
    admin
        .batch_execute("ALTER ROLE pwdrift_app_app PASSWORD 'set-by-someone-else'")
        .await
        .expect("change the password");
    let (up_to_date, drift) = expect_exists(&p, &d).await;
    assert!(!up_to_date);
    assert_eq!(drift, vec!["password of user app".to_string()]);
    assert!(drift.iter().all(|l| !l.contains(&same)));

    // The next converge repairs it: the desired password logs in again,
    // the other one no longer does; the untouched MD5 one stays as it was.
    p.update(&d, &Default::default()).await.expect("update");
    assert_allowed(
        sql_as(pg, &d, "app", "main", "SELECT 1").await,
        "login with the desired password after the repair",
    );
    let refused = pg
        .sql_as(
            "pwdrift_app_app",
            "set-by-someone-else",
            "pwdrift_app_main",
            "SELECT 1",
        )
        .await
        .expect_err("the intruder's password is refused");
    assert_eq!(refused.code(), Some(&SqlState::INVALID_PASSWORD));
    let still: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'pwdrift_app_md5'",
            &[],
        )
        .await
        .expect("authid")
        .get(0);
    assert_eq!(still, stored, "a matching password is not rewritten");
    assert_up_to_date(&p, &d).await;
}

/// Backend pids of bulkhead's sessions on a server.
async fn bulkhead_backends(admin: &tokio_postgres::Client) -> BTreeSet<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'bulkhead'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn pooled_sessions_are_reused_and_survive_a_restart() {
    let pg = TestPostgres::start_new().await;
    let d = cluster(
        "pool-app",
        &[("main", None), ("side", None)],
        &[
            ("app", &["main", "side"], Privileges::ReadWrite),
            ("ro", &["main"], Privileges::ReadOnly),
        ],
    );
    provider(&pg).create(&d).await.expect("create");
    // Each reconcile parses the connection string anew: the sessions are
    // shared all the same.
    assert_up_to_date(&provider(&pg), &d).await;
    let admin = pg.admin("postgres").await;
    let first = bulkhead_backends(&admin).await;
    assert!(!first.is_empty(), "pooled sessions stay open");
    assert!(
        first.len() <= 4 + 2 * 2,
        "pools are bounded: {} sessions",
        first.len()
    );
    for _ in 0..3 {
        assert_up_to_date(&provider(&pg), &d).await;
    }
    assert_eq!(
        bulkhead_backends(&admin).await,
        first,
        "observes reuse the same sessions, and log in as no user"
    );
    drop(admin);

    // A restart breaks every pooled session: the next observe drops them
    // and succeeds on new ones.
    pg.stop();
    pg.start();
    assert_up_to_date(&provider(&pg), &d).await;
    let admin = pg.admin("postgres").await;
    let after = bulkhead_backends(&admin).await;
    assert!(!after.is_empty());
    assert!(after.is_disjoint(&first));

    // A session killed under the pool (no clean shutdown) is replaced too.
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bulkhead'",
        )
        .await
        .expect("terminate bulkhead's sessions");
    assert_up_to_date(&provider(&pg), &d).await;
    let mut rotated = d.clone();
    rotated
        .passwords
        .insert("app".into(), Secret::new("rotated-after-restart"));
    let (up_to_date, drift) = expect_exists(&provider(&pg), &rotated).await;
    assert!(!up_to_date);
    assert_eq!(drift, vec!["password of user app".to_string()]);
    provider(&pg)
        .update(&rotated, &Default::default())
        .await
        .expect("update after the restart");
    assert_up_to_date(&provider(&pg), &rotated).await;
}

#[tokio::test]
async fn hostile_names_are_quoted_or_refused() {
    let pg = shared().await;
    let p = provider(pg);
    let bystander = cluster(
        "hn-bystander",
        &[("main", None)],
        &[("app", &["main"], Privileges::Owner)],
    );
    p.create(&bystander).await.expect("create the bystander");

    let evil_db = "x\"; DROP DATABASE postgres; --";
    let evil_db2 = "a' OR '1'='1";
    let evil_user = "u\"; DROP ROLE postgres; --\\";
    let d = cluster(
        "hn-evil",
        &[(evil_db, None), (evil_db2, None)],
        &[
            (evil_user, &[evil_db, evil_db2], Privileges::Owner),
            ("Ünïcode ' \"", &[evil_db2], Privileges::ReadOnly),
        ],
    );
    p.create(&d)
        .await
        .expect("hostile names are created, quoted");
    let admin = pg.admin("postgres").await;
    let dbs: BTreeSet<String> = admin
        .query("SELECT datname::text FROM pg_database", &[])
        .await
        .expect("databases")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(dbs.contains("postgres"), "postgres database survives");
    assert!(dbs.contains(&phys(&d, evil_db)), "{dbs:?}");
    assert!(dbs.contains(&phys(&d, evil_db2)), "{dbs:?}");
    let postgres_role: i64 = scalar_i64(
        &admin,
        "SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'",
    )
    .await;
    assert_eq!(postgres_role, 1);
    assert_allowed(
        sql_as(pg, &d, evil_user, evil_db, "CREATE TABLE t (a int)").await,
        "the hostile user works as an owner",
    );
    assert_allowed(
        connect(pg, &d, "Ünïcode ' \"", &d, evil_db2).await,
        "unicode user logs in",
    );
    assert_up_to_date(&p, &d).await;

    // A hostile cluster name (the marker is a quoted literal too).
    let mut q = cluster(
        "hn-q'uote\\",
        &[("main", None)],
        &[("app", &["main"], Privileges::ReadOnly)],
    );
    q.owner.name = "it's \\ odd".into();
    p.create(&q).await.expect("quoted cluster name");
    assert_up_to_date(&p, &q).await;
    p.delete(&q).await.expect("delete");

    // Too long for PostgreSQL: refused, never truncated.
    let long = "l".repeat(60);
    let too_long = cluster("hn-long", &[(long.as_str(), None)], &[]);
    assert_eq!(terminal_reason(p.create(&too_long).await), "NameTooLong");
    assert_eq!(
        terminal_reason(p.observe(&too_long).await.map(|_| ())),
        "NameTooLong"
    );
    let long_user = cluster(
        "hn-long2",
        &[("main", None)],
        &[(long.as_str(), &["main"], Privileges::ReadOnly)],
    );
    assert_eq!(terminal_reason(p.create(&long_user).await), "NameTooLong");
    let nul = cluster("hn-nul", &[("a\0b", None)], &[]);
    assert_eq!(terminal_reason(p.create(&nul).await), "InvalidName");
    for prefix in ["hn_long", "hn_long2", "hn_nul"] {
        let (dbs, roles) = names_with_prefix(pg, prefix).await;
        assert!(
            dbs.is_empty() && roles.is_empty(),
            "{prefix}: {dbs:?} {roles:?}"
        );
    }

    // The bystander is untouched.
    assert_up_to_date(&p, &bystander).await;
    assert_allowed(
        sql_as(pg, &bystander, "app", "main", "SELECT 1").await,
        "bystander logs in",
    );
    p.delete(&d).await.expect("delete hostile cluster");
    let (dbs, roles) = names_with_prefix(pg, "hn_evil").await;
    assert!(dbs.is_empty() && roles.is_empty(), "{dbs:?} {roles:?}");
}

#[tokio::test]
async fn unmanaged_or_foreign_objects_are_name_conflicts() {
    let pg = shared().await;
    let p = provider(pg);
    let admin = pg.admin("postgres").await;
    admin
        .batch_execute("CREATE DATABASE nc_db_main")
        .await
        .expect("unmanaged database");
    admin
        .batch_execute("CREATE ROLE nc_role_app LOGIN PASSWORD 'pre-existing'")
        .await
        .expect("unmanaged role");

    // An unmanaged database under the physical name.
    let d = cluster(
        "nc-db",
        &[("main", None)],
        &[("app", &["main"], Privileges::Owner)],
    );
    assert_eq!(
        terminal_reason(p.observe(&d).await.map(|_| ())),
        "NameConflict"
    );
    assert_eq!(terminal_reason(p.create(&d).await), "NameConflict");
    let (_, roles) = names_with_prefix(pg, "nc_db").await;
    assert!(
        roles.is_empty(),
        "nothing created before the conflict was found: {roles:?}"
    );
    let comment: Option<String> = admin
        .query_one("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'nc_db_main'", &[])
        .await
        .expect("db")
        .get(0);
    assert_eq!(comment, None, "the unmanaged database is not adopted");
    // Delete leaves what it does not own.
    p.delete(&d).await.expect("delete");
    assert_eq!(
        scalar_i64(
            &admin,
            "SELECT count(*) FROM pg_database WHERE datname = 'nc_db_main'"
        )
        .await,
        1
    );

    // An unmanaged role under a user's physical name.
    let r = cluster(
        "nc-role",
        &[("main", None)],
        &[("app", &["main"], Privileges::Owner)],
    );
    assert_eq!(terminal_reason(p.create(&r).await), "NameConflict");
    let (dbs, _) = names_with_prefix(pg, "nc_role").await;
    assert!(dbs.is_empty(), "{dbs:?}");
    let memberships = scalar_i64(
        &admin,
        "SELECT count(*) FROM pg_auth_members WHERE member = (SELECT oid FROM pg_roles WHERE rolname = 'nc_role_app')",
    )
    .await;
    assert_eq!(memberships, 0, "nothing granted to the unmanaged role");
    assert!(
        pg.sql_as("nc_role_app", "pre-existing", "postgres", "SELECT 1")
            .await
            .is_ok(),
        "its password is untouched"
    );

    // Another DatabaseCluster (another namespace) with the same external name.
    let first = cluster(
        "nc-twin",
        &[("main", None)],
        &[("app", &["main"], Privileges::Owner)],
    );
    p.create(&first).await.expect("create the first twin");
    let mut twin = cluster(
        "nc-twin",
        &[("main", None)],
        &[("app", &["main"], Privileges::Owner)],
    );
    twin.owner.namespace = Some("intruders".into());
    twin.namespace = "intruders".into();
    assert_eq!(terminal_reason(p.create(&twin).await), "NameConflict");
    assert_eq!(
        terminal_reason(p.update(&twin, &Default::default()).await),
        "NameConflict"
    );
    p.delete(&twin).await.expect("the twin's delete is a no-op");
    assert_allowed(
        sql_as(pg, &first, "app", "main", "SELECT 1").await,
        "first twin still works with its password",
    );
    let refused = pg
        .sql_as(
            &phys(&twin, "app"),
            &password(&twin, "app"),
            &phys(&twin, "main"),
            "SELECT 1",
        )
        .await
        .expect_err("the intruder's password was never set");
    assert_eq!(refused.code(), Some(&SqlState::INVALID_PASSWORD));
    assert_up_to_date(&p, &first).await;
}

#[tokio::test]
async fn delete_removes_everything_of_the_cluster_only() {
    let pg = shared().await;
    let p = provider(pg);
    let d = cluster(
        "del-app",
        &[("main", None), ("side", Some("own"))],
        &[
            ("own", &["main", "side"], Privileges::Owner),
            ("ro", &["main"], Privileges::ReadOnly),
        ],
    );
    let neighbour = cluster(
        "del-neighbour",
        &[("main", None)],
        &[("app", &["main"], Privileges::ReadWrite)],
    );
    p.create(&d).await.expect("create");
    p.create(&neighbour).await.expect("create neighbour");
    assert_allowed(
        sql_as(pg, &d, "own", "main", "CREATE TABLE t (a int)").await,
        "owner DDL",
    );
    // A session stays connected while the cluster is deleted.
    let session = pg
        .connect_as(&phys(&d, "ro"), &password(&d, "ro"), &phys(&d, "main"))
        .await
        .expect("session");
    session
        .batch_execute("SELECT 1")
        .await
        .expect("session works");

    p.delete(&d).await.expect("delete");
    let (dbs, roles) = names_with_prefix(pg, "del_app").await;
    assert!(dbs.is_empty(), "{dbs:?}");
    assert!(roles.is_empty(), "{roles:?}");
    assert!(
        session.batch_execute("SELECT 1").await.is_err(),
        "the open session was ended"
    );
    assert!(matches!(
        p.observe(&d).await.expect("observe"),
        Observation::Missing
    ));
    p.delete(&d).await.expect("second delete is Ok");
    assert_up_to_date(&p, &neighbour).await;
    assert_allowed(
        sql_as(pg, &neighbour, "app", "main", "SELECT 1").await,
        "neighbour still works",
    );
}

fn copy_request(
    source: &DesiredDatabaseCluster,
    mode: CopyMode,
    columns: &[(&str, MaskAction)],
    exclude: &[&str],
) -> CopyRequest {
    CopyRequest {
        source: source.clone(),
        source_connection: None,
        mode,
        sanitize: Sanitize {
            exclude_tables: exclude.iter().map(|s| s.to_string()).collect(),
            columns: columns
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
        },
        safe_columns: Vec::new(),
        allow_unmasked: false,
    }
}

/// A copy's two ends, created on `p`: see [`prod_and_stage`].
async fn created_prod_and_stage(
    p: &PostgresDatabaseClusters,
    name: &str,
    with_reader: bool,
) -> (DesiredDatabaseCluster, DesiredDatabaseCluster) {
    let (source, target) = prod_and_stage(name, with_reader);
    p.create(&source).await.expect("create source");
    p.create(&target).await.expect("create target");
    (source, target)
}

/// A copy's two ends: `<name>-prod` and `<name>-stage`, each with one
/// database `app` and its owner `own`; the target also with a readOnly
/// user `ro` when `with_reader`.
fn prod_and_stage(
    name: &str,
    with_reader: bool,
) -> (DesiredDatabaseCluster, DesiredDatabaseCluster) {
    let owner: (&str, &[&str], Privileges) = ("own", &["app"], Privileges::Owner);
    let reader: (&str, &[&str], Privileges) = ("ro", &["app"], Privileges::ReadOnly);
    let target_users = if with_reader {
        vec![owner, reader]
    } else {
        vec![owner]
    };
    (
        cluster(&format!("{name}-prod"), &[("app", None)], &[owner]),
        cluster(&format!("{name}-stage"), &[("app", None)], &target_users),
    )
}

/// A source holding people (`users`, with sensitive-looking columns), their
/// `orders`, an `audit_log` and views over them; an empty target with an
/// owner and a readOnly user.
async fn people_fixture(
    pg: &TestPostgres,
    p: &PostgresDatabaseClusters,
    name: &str,
) -> (DesiredDatabaseCluster, DesiredDatabaseCluster) {
    let (source, target) = created_prod_and_stage(p, name, true).await;
    sql_as(
        pg,
        &source,
        "own",
        "app",
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL,
                             ssn varchar(11), age int, mood mood DEFAULT 'ok', created timestamptz DEFAULT now());
         CREATE INDEX users_age ON users (age);
         CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                              user_id int NOT NULL REFERENCES users (id), total numeric(10, 2) CHECK (total >= 0));
         CREATE TABLE audit_log (id serial PRIMARY KEY, message text);
         CREATE VIEW adults AS SELECT id, email FROM users WHERE age >= 18;
         CREATE VIEW audit_view AS SELECT * FROM audit_log;
         INSERT INTO users (email, name, ssn, age)
              SELECT 'person' || i || '@example.com', 'Person ' || i, lpad(i::text, 3, '0') || '-45-6789', 10 + i
                FROM generate_series(1, 50) i;
         INSERT INTO orders (user_id, total) SELECT 1 + (i % 50), i FROM generate_series(1, 120) i;
         INSERT INTO audit_log (message) SELECT 'secret audit ' || i FROM generate_series(1, 10) i;",
    )
    .await
    .expect("fill the source");
    (source, target)
}

/// Every column of the people fixture that looks sensitive (users.email,
/// users.name in a table of people, users.ssn) masked, so the copy is not
/// refused; the audit log excluded.
fn people_masked(source: &DesiredDatabaseCluster) -> CopyRequest {
    copy_request(
        source,
        CopyMode::Sanitized,
        &[
            ("users.email", MaskAction::Hash),
            ("users.ssn", MaskAction::Redact),
            ("users.name", MaskAction::Null),
        ],
        &["audit_log"],
    )
}

#[tokio::test]
async fn sanitized_copy_masks_every_row() {
    let pg = shared().await;
    let p = provider(pg);
    let (source, target) = people_fixture(pg, &p, "cp").await;
    let request = people_masked(&source);
    let report = p.copy_from(&target, &request).await.expect("copy");
    assert_eq!(
        report,
        CopyReport {
            tables: 2,
            rows: 170
        }
    );

    let src = pg.admin(&phys(&source, "app")).await;
    let dst = pg.admin(&phys(&target, "app")).await;
    let originals: BTreeSet<String> = src
        .query(
            "SELECT email FROM users UNION SELECT name FROM users UNION SELECT ssn FROM users",
            &[],
        )
        .await
        .expect("originals")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows = dst
        .query(
            "SELECT id, email, name, ssn, age FROM users ORDER BY id",
            &[],
        )
        .await
        .expect("copied users");
    assert_eq!(rows.len(), 50);
    let mut hashes = BTreeSet::new();
    for row in &rows {
        let email: String = row.get(1);
        let name: Option<String> = row.get(2);
        let ssn: Option<String> = row.get(3);
        assert!(
            !originals.contains(&email),
            "an original email survived: row {}",
            row.get::<_, i32>(0)
        );
        assert!(
            email.len() == 64 && email.chars().all(|c| c.is_ascii_hexdigit()),
            "hash expected, got {email}"
        );
        assert_eq!(name, None);
        assert_eq!(ssn.as_deref(), Some("REDACTED"));
        hashes.insert(email);
    }
    assert_eq!(hashes.len(), 50, "hashes of distinct values stay distinct");
    // Unmasked columns are copied as they were.
    let ages: i64 = scalar_i64(&dst, "SELECT sum(age)::int8 FROM users").await;
    assert_eq!(
        ages,
        scalar_i64(&src, "SELECT sum(age)::int8 FROM users").await
    );
    assert_eq!(scalar_i64(&dst, "SELECT count(*) FROM orders").await, 120);
    // No masked value anywhere in the copy's text.
    let leaks = dst
        .query("SELECT u::text FROM users u", &[])
        .await
        .expect("rows as text")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|text| originals.iter().any(|o| text.contains(o.as_str())))
        .count();
    assert_eq!(leaks, 0);
    // Excluded table and the view that reads it are absent; the other view exists.
    assert_eq!(
        scalar_i64(
            &dst,
            "SELECT count(*) FROM pg_class WHERE relname IN ('audit_log', 'audit_view')"
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(&dst, "SELECT count(*) FROM adults").await,
        43,
        "the view reads the copied users"
    );
    // Constraints, indexes and sequences came along.
    assert_eq!(
        scalar_i64(&dst, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype IN ('p', 'f', 'c')").await,
        3
    );
    assert_eq!(
        scalar_i64(
            &dst,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'users_age'"
        )
        .await,
        1
    );
    // The target's users get the copied tables.
    assert_allowed(
        sql_as(
            pg,
            &target,
            "ro",
            "app",
            "SELECT count(*) FROM users; SELECT * FROM adults",
        )
        .await,
        "target readOnly reads the copy",
    );
    assert_denied(
        sql_as(pg, &target, "ro", "app", "DELETE FROM orders").await,
        "target readOnly cannot write the copy",
    );
    assert_allowed(
        sql_as(pg, &target, "own", "app", "INSERT INTO users (email, name) VALUES ('new@x', 'n'); INSERT INTO orders (user_id, total) VALUES (1, 1)").await,
        "sequences continue after the copy",
    );
    assert_eq!(
        scalar_i64(&dst, "SELECT max(id)::int8 FROM users").await,
        51
    );
    assert_up_to_date(&p, &target).await;
    // The source is untouched.
    assert_eq!(scalar_i64(&src, "SELECT count(*) FROM audit_log").await, 10);
    assert_eq!(
        scalar_i64(
            &src,
            "SELECT count(*) FROM users WHERE email LIKE 'person%'"
        )
        .await,
        50
    );

    // Re-copy replaces rather than duplicates.
    let again = p.copy_from(&target, &request).await.expect("copy again");
    assert_eq!(
        again,
        CopyReport {
            tables: 2,
            rows: 170
        }
    );
    assert_eq!(scalar_i64(&dst, "SELECT count(*) FROM users").await, 50);
    assert_eq!(scalar_i64(&dst, "SELECT count(*) FROM orders").await, 120);

    // SchemaOnly: every table, no rows.
    let schema_only = copy_request(&source, CopyMode::SchemaOnly, &[], &[]);
    let report = p
        .copy_from(&target, &schema_only)
        .await
        .expect("schema-only copy");
    assert_eq!(report, CopyReport { tables: 3, rows: 0 });
    for table in ["users", "orders", "audit_log"] {
        assert_eq!(
            scalar_i64(&dst, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table} is empty"
        );
    }
    assert_allowed(
        sql_as(pg, &target, "ro", "app", "SELECT * FROM audit_log").await,
        "grants follow a schema-only copy",
    );
}

/// Bad sanitize rules fail before anything changes: after a good copy of
/// the people fixture, each bad request is refused with its reason and the
/// copy stays as it was.
#[tokio::test]
async fn bad_sanitize_rules_fail_before_anything_changes() {
    let pg = shared().await;
    let p = provider(pg);
    let (source, target) = people_fixture(pg, &p, "cp-bad").await;
    p.copy_from(&target, &people_masked(&source))
        .await
        .expect("the good copy");
    let dst = pg.admin(&phys(&target, "app")).await;
    type Columns<'a> = &'a [(&'a str, MaskAction)];
    // (case, columns masked, tables excluded, the Terminal reason)
    let cases: [(&str, Columns, &[&str], &str); 6] = [
        (
            "a mask on an unknown table",
            &[("customers.email", MaskAction::Hash)],
            &[],
            "UnknownTable",
        ),
        ("an unknown excluded table", &[], &["nope"], "UnknownTable"),
        (
            "an unknown column",
            &[("users.phone", MaskAction::Null)],
            &[],
            "UnknownColumn",
        ),
        (
            "a hash of an integer",
            &[("public.users.age", MaskAction::Hash)],
            &[],
            "UnsupportedMask",
        ),
        (
            "a redacted unique column",
            &[("users.email", MaskAction::Redact)],
            &[],
            "UnsupportedMask",
        ),
        (
            "a nulled primary key",
            &[("users.id", MaskAction::Null)],
            &[],
            "UnsupportedMask",
        ),
    ];
    for (case, columns, exclude, reason) in cases {
        let request = copy_request(&source, CopyMode::Sanitized, columns, exclude);
        assert_eq!(
            terminal_reason(p.copy_from(&target, &request).await),
            reason,
            "{case}"
        );
    }
    assert_eq!(
        scalar_i64(&dst, "SELECT count(*) FROM users").await,
        50,
        "failed copies left the target as it was"
    );
}

/// Every value of `column` in `table`, as text, sorted.
async fn column_values(client: &tokio_postgres::Client, table: &str, column: &str) -> Vec<String> {
    let sql = format!("SELECT {column}::text FROM {table} ORDER BY 1");
    client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Asserts that no row of `table` holds any of `originals` anywhere in it.
async fn assert_no_original_in(
    client: &tokio_postgres::Client,
    table: &str,
    originals: &BTreeSet<String>,
) {
    let rows: Vec<String> = client
        .query(&format!("SELECT t::text FROM {table} t"), &[])
        .await
        .unwrap_or_else(|e| panic!("rows of {table}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!rows.is_empty(), "{table} has rows");
    for row in rows {
        assert!(
            !originals.iter().any(|o| row.contains(o.as_str())),
            "an original value survived in {table}: {row}"
        );
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

#[tokio::test]
async fn sanitized_copy_across_servers() {
    // Production and staging on different servers, as tiers must be.
    let target_pg = shared().await;
    let source_pg = TestPostgres::start_new().await;
    let target_p = provider(target_pg);
    let source_p = provider(&source_pg);
    let (source, target) = prod_and_stage("xs", true);
    source_p.create(&source).await.expect("create the source");
    target_p.create(&target).await.expect("create the target");
    sql_as(
        &source_pg,
        &source,
        "own",
        "app",
        "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL UNIQUE, phone text, plan text NOT NULL);
         CREATE TABLE tickets (id serial PRIMARY KEY, customer_email text NOT NULL, body text);
         CREATE TABLE payment_tokens (id serial PRIMARY KEY, token text NOT NULL);
         INSERT INTO customers
              SELECT i, 'c' || i || '@prod.example', '+1-555-' || lpad(i::text, 4, '0'),
                     CASE WHEN i % 3 = 0 THEN 'pro' ELSE 'free' END
                FROM generate_series(1, 40) i;
         INSERT INTO tickets (customer_email, body)
              SELECT 'c' || (1 + i % 40) || '@prod.example', 'ticket ' || i FROM generate_series(1, 90) i;
         INSERT INTO payment_tokens (token) SELECT md5(i::text) FROM generate_series(1, 5) i;",
    )
    .await
    .expect("fill the source");

    let masked = copy_request(
        &source,
        CopyMode::Sanitized,
        &[
            ("customers.email", MaskAction::Hash),
            ("customers.phone", MaskAction::Redact),
            ("tickets.customer_email", MaskAction::Hash),
        ],
        &["payment_tokens"],
    );

    // Without the source's connection the copy looks on the target's
    // server, where the source does not exist.
    match target_p.copy_from(&target, &masked).await {
        Err(ProviderError::Transient { reason, message }) => {
            assert_eq!(reason, "SourceNotReady", "{message}");
            assert!(
                message.contains(&format!("{}:{}", target_pg.host(), target_pg.port())),
                "says where it looked: {message}"
            );
        }
        other => panic!("expected SourceNotReady, got {other:?}"),
    }
    // A source connection that is not a connection string: refused, and
    // the error quotes nothing of it.
    let garbage = CopyRequest {
        source_connection: Some(Secret::new("fm1r_c2VjcmV0dG9rZW5fZm9yX2ZseQ")),
        ..masked.clone()
    };
    match target_p.copy_from(&target, &garbage).await {
        Err(ProviderError::Terminal { reason, message }) => {
            assert_eq!(reason, "CredentialsUnavailable", "{message}");
            assert!(
                message.starts_with("the source's admin connection: "),
                "{message}"
            );
            assert!(
                !message.contains("fm1r") && !message.contains("c2Vj"),
                "{message}"
            );
        }
        other => panic!("expected CredentialsUnavailable, got {other:?}"),
    }

    let request = CopyRequest {
        source_connection: Some(Secret::new(source_pg.admin_dsn())),
        ..masked
    };
    let report = target_p
        .copy_from(&target, &request)
        .await
        .expect("copy across servers");
    let src = source_pg.admin(&phys(&source, "app")).await;
    let dst = target_pg.admin(&phys(&target, "app")).await;
    let source_rows = scalar_i64(&src, "SELECT count(*) FROM customers").await
        + scalar_i64(&src, "SELECT count(*) FROM tickets").await;
    assert_eq!(
        report,
        CopyReport {
            tables: 2,
            rows: source_rows
        }
    );

    // Each cluster stays on its own server.
    let target_admin = target_pg.admin("postgres").await;
    let source_admin = source_pg.admin("postgres").await;
    let on = |db: String| format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'");
    assert_eq!(
        scalar_i64(&target_admin, &on(phys(&source, "app"))).await,
        0
    );
    assert_eq!(
        scalar_i64(&source_admin, &on(phys(&target, "app"))).await,
        0
    );

    // Rows arrived.
    for table in ["customers", "tickets"] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(
            scalar_i64(&dst, &sql).await,
            scalar_i64(&src, &sql).await,
            "{table}"
        );
    }
    // Unmasked columns are as they were.
    assert_eq!(
        column_values(&dst, "customers", "plan").await,
        column_values(&src, "customers", "plan").await
    );
    assert_eq!(
        column_values(&dst, "tickets", "body").await,
        column_values(&src, "tickets", "body").await
    );
    // Masked columns hold no original value.
    let mut originals: BTreeSet<String> = column_values(&src, "customers", "email")
        .await
        .into_iter()
        .collect();
    originals.extend(column_values(&src, "customers", "phone").await);
    originals.extend(column_values(&src, "tickets", "customer_email").await);
    assert_no_original_in(&dst, "customers", &originals).await;
    assert_no_original_in(&dst, "tickets", &originals).await;
    for email in column_values(&dst, "customers", "email").await {
        assert!(is_sha256_hex(&email), "hash expected, got {email}");
    }
    for phone in column_values(&dst, "customers", "phone").await {
        assert_eq!(phone, "REDACTED");
    }
    // One key per copy, on the source's server: equal values still join.
    let joined = "SELECT count(*) FROM tickets t JOIN customers c ON c.email = t.customer_email";
    assert_eq!(
        scalar_i64(&dst, joined).await,
        scalar_i64(&src, joined).await
    );
    // The excluded table is absent.
    assert_eq!(
        scalar_i64(
            &dst,
            "SELECT count(*) FROM pg_class WHERE relname = 'payment_tokens'"
        )
        .await,
        0
    );
    assert_allowed(
        sql_as(
            target_pg,
            &target,
            "ro",
            "app",
            "SELECT count(*) FROM tickets",
        )
        .await,
        "the target's readOnly user reads the copy",
    );
    assert_up_to_date(&target_p, &target).await;
}

/// The user relations of a database (tables, views, sequences, indexes).
async fn relations(client: &tokio_postgres::Client) -> BTreeSet<String> {
    client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
            &[],
        )
        .await
        .expect("list relations")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A source with two sensitive-looking columns (`patients.email`,
/// `patients.ssn`) among columns that only sound like it, and a target
/// holding a table of its own.
async fn sensitive_fixture(
    pg: &TestPostgres,
    p: &PostgresDatabaseClusters,
    name: &str,
) -> (DesiredDatabaseCluster, DesiredDatabaseCluster) {
    let (source, target) = created_prod_and_stage(p, name, false).await;
    sql_as(
        pg,
        &source,
        "own",
        "app",
        "CREATE TABLE patients (id int PRIMARY KEY, email text NOT NULL, ssn varchar(11),
                                email_verified boolean, username text, created_at timestamptz DEFAULT now());
         CREATE TABLE visits (id serial PRIMARY KEY, patient_id int REFERENCES patients (id),
                              hostname text, filename text, table_name text);
         INSERT INTO patients (id, email, ssn, email_verified, username)
              SELECT i, 'p' || i || '@clinic.example', lpad(i::text, 3, '0') || '-12-3456', i % 2 = 0, 'user' || i
                FROM generate_series(1, 20) i;
         INSERT INTO visits (patient_id, hostname, filename, table_name)
              SELECT 1 + i % 20, 'host' || i, 'scan' || i || '.pdf', 'visits' FROM generate_series(1, 30) i;",
    )
    .await
    .expect("fill the source");
    sql_as(
        pg,
        &target,
        "own",
        "app",
        "CREATE TABLE keep_me (id int); INSERT INTO keep_me SELECT generate_series(1, 3);",
    )
    .await
    .expect("fill the target");
    (source, target)
}

#[tokio::test]
async fn copy_refuses_unmasked_sensitive_columns() {
    let pg = shared().await;
    let p = provider(pg);
    let (source, target) = sensitive_fixture(pg, &p, "sens").await;
    let dst = pg.admin(&phys(&target, "app")).await;
    let before = relations(&dst).await;

    let unmasked = copy_request(&source, CopyMode::Sanitized, &[], &[]);
    let message = match p.copy_from(&target, &unmasked).await {
        Err(ProviderError::Terminal { reason, message }) => {
            assert_eq!(reason, reasons::SENSITIVE_COLUMNS_UNMASKED);
            message
        }
        other => panic!("expected SensitiveColumnsUnmasked, got {other:?}"),
    };
    // Exactly the two columns, as database.schema.table.column (category).
    let listed: BTreeSet<&str> = message
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once(". "))
        .map(|(list, _)| list.split(", ").collect())
        .unwrap_or_else(|| panic!("no list in {message}"));
    assert_eq!(
        listed,
        BTreeSet::from([
            "app.public.patients.email (email)",
            "app.public.patients.ssn (national id)",
        ]),
        "{message}"
    );
    for how in [
        "sanitize.columns",
        "spec.copyPolicy.safeColumns",
        "spec.copyPolicy.allowUnmasked",
    ] {
        assert!(message.contains(how), "the fix names {how}: {message}");
    }
    // Nothing was written to the target.
    assert_eq!(scalar_i64(&dst, "SELECT count(*) FROM keep_me").await, 3);
    assert_eq!(relations(&dst).await, before);

    // Masking one and leaving the other still refuses, naming the other.
    let half = copy_request(
        &source,
        CopyMode::Sanitized,
        &[("patients.email", MaskAction::Hash)],
        &[],
    );
    match p.copy_from(&target, &half).await {
        Err(ProviderError::Terminal { reason, message }) => {
            assert_eq!(reason, "SensitiveColumnsUnmasked");
            assert!(
                message.contains("app.public.patients.ssn (national id)"),
                "{message}"
            );
            assert!(!message.contains("patients.email"), "{message}");
        }
        other => panic!("expected SensitiveColumnsUnmasked, got {other:?}"),
    }
    // A declaration that names nothing is an error, not a pass.
    let typo = CopyRequest {
        safe_columns: vec!["patients.ssn_typo".into()],
        ..half.clone()
    };
    assert_eq!(
        terminal_reason(p.copy_from(&target, &typo).await),
        "UnknownColumn"
    );
    assert_eq!(scalar_i64(&dst, "SELECT count(*) FROM keep_me").await, 3);
    assert_eq!(relations(&dst).await, before);

    // SchemaOnly copies no rows: nothing to refuse.
    let schema_only = copy_request(&source, CopyMode::SchemaOnly, &[], &[]);
    let report = p
        .copy_from(&target, &schema_only)
        .await
        .expect("schema-only copy");
    assert_eq!(report, CopyReport { tables: 2, rows: 0 });
    assert_eq!(scalar_i64(&dst, "SELECT count(*) FROM patients").await, 0);
}

#[tokio::test]
async fn sensitive_columns_pass_once_masked_or_declared_safe() {
    let pg = shared().await;
    let p = provider(pg);
    let (source, target) = sensitive_fixture(pg, &p, "sens-ok").await;
    let src = pg.admin(&phys(&source, "app")).await;
    let dst = pg.admin(&phys(&target, "app")).await;

    // email masked, ssn declared safe by the source.
    let request = CopyRequest {
        safe_columns: vec!["public.patients.ssn".into()],
        ..copy_request(
            &source,
            CopyMode::Sanitized,
            &[("patients.email", MaskAction::Hash)],
            &[],
        )
    };
    p.copy_from(&target, &request).await.expect("copy");
    let emails: BTreeSet<String> = column_values(&src, "patients", "email")
        .await
        .into_iter()
        .collect();
    assert_no_original_in(&dst, "patients", &emails).await;
    assert_eq!(
        column_values(&dst, "patients", "ssn").await,
        column_values(&src, "patients", "ssn").await,
        "a column declared safe is copied as it is"
    );
    assert_eq!(
        scalar_i64(&dst, "SELECT count(*) FROM visits").await,
        scalar_i64(&src, "SELECT count(*) FROM visits").await
    );

    // Both masked: passes too, with nothing declared.
    let both = copy_request(
        &source,
        CopyMode::Sanitized,
        &[
            ("patients.email", MaskAction::Hash),
            ("patients.ssn", MaskAction::Null),
        ],
        &[],
    );
    p.copy_from(&target, &both).await.expect("copy both masked");
    assert_eq!(
        scalar_i64(&dst, "SELECT count(*) FROM patients WHERE ssn IS NOT NULL").await,
        0
    );

    // Excluding the table passes too.
    let excluded = copy_request(&source, CopyMode::Sanitized, &[], &["patients", "visits"]);
    let report = p
        .copy_from(&target, &excluded)
        .await
        .expect("copy without patients");
    assert_eq!(report, CopyReport { tables: 0, rows: 0 });
}

#[tokio::test]
async fn domains_arrays_and_inet_columns_are_classified() {
    let pg = shared().await;
    let p = provider(pg);
    let (source, target) = created_prod_and_stage(&p, "sens-types", false).await;
    sql_as(
        pg,
        &source,
        "own",
        "app",
        "CREATE DOMAIN email_address AS text CHECK (VALUE LIKE '%@%');
         CREATE TABLE signups (id int PRIMARY KEY, contact email_address, seen_from inet,
                               phone text[], tags text[], referrer text);
         INSERT INTO signups VALUES (1, 'a@b.example', '192.0.2.1', '{+1-555-0100}', '{x}', 'ad');",
    )
    .await
    .expect("fill the source");
    let request = copy_request(&source, CopyMode::Sanitized, &[], &[]);
    let message = match p.copy_from(&target, &request).await {
        Err(ProviderError::Terminal { reason, message }) => {
            assert_eq!(reason, "SensitiveColumnsUnmasked", "{message}");
            message
        }
        other => panic!("expected SensitiveColumnsUnmasked, got {other:?}"),
    };
    assert!(
        message.starts_with(
            "3 column(s) look sensitive and would be copied unmasked: \
             app.public.signups.contact (email), app.public.signups.phone (phone), \
             app.public.signups.seen_from (IP address). "
        ),
        "{message}"
    );
}

#[tokio::test]
async fn allow_unmasked_copies_sensitive_columns_in_clear() {
    let pg = shared().await;
    let p = provider(pg);
    let (source, target) = sensitive_fixture(pg, &p, "sens-clear").await;
    let request = CopyRequest {
        allow_unmasked: true,
        ..copy_request(&source, CopyMode::Sanitized, &[], &[])
    };
    p.copy_from(&target, &request).await.expect("copy");
    let src = pg.admin(&phys(&source, "app")).await;
    let dst = pg.admin(&phys(&target, "app")).await;
    for column in ["email", "ssn"] {
        assert_eq!(
            column_values(&dst, "patients", column).await,
            column_values(&src, "patients", column).await,
            "{column} copied in clear"
        );
    }
}

#[tokio::test]
async fn stopped_server_is_unavailable_and_recovers() {
    let pg = TestPostgres::start_new().await;
    let p = provider(&pg);
    let d = cluster(
        "down-app",
        &[("main", None)],
        &[("app", &["main"], Privileges::ReadWrite)],
    );
    p.create(&d).await.expect("create");
    assert_up_to_date(&p, &d).await;

    pg.stop();
    let started = std::time::Instant::now();
    match p.observe(&d).await {
        Err(ProviderError::Unavailable { message }) => {
            assert!(
                !message.contains(pg.admin_password()),
                "the admin password leaked: {message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "fails fast"
    );
    assert!(matches!(
        p.create(&d).await,
        Err(ProviderError::Unavailable { .. })
    ));

    pg.start();
    assert_up_to_date(&p, &d).await;
    assert_allowed(
        sql_as(&pg, &d, "app", "main", "SELECT 1").await,
        "login after restart",
    );

    // Wrong admin credentials are terminal, and say nothing of the password.
    let wrong = PostgresDatabaseClusters::from_connection_string(&format!(
        "host=127.0.0.1 port={} user=postgres password='not-the-password' dbname=postgres sslmode=disable",
        pg.port()
    ))
    .expect("parses");
    let err = wrong.observe(&d).await.expect_err("bad credentials");
    assert!(err.is_terminal(), "{err:?}");
    assert!(!err.to_string().contains("not-the-password"));
}

#[tokio::test]
async fn tls_as_sslmode_asks() {
    let pg = TestPostgres::start_new_tls().await;
    let ca = pg.ca_file().to_str().expect("utf-8 path").to_string();
    let other_ca = pg.make_ca("other-ca");
    let other_ca = other_ca.to_str().expect("utf-8 path");
    let dsn = |host: &str, params: &str| {
        format!(
            "postgres://postgres:{}@{host}:{}/postgres?{params}",
            pg.admin_password(),
            pg.port()
        )
    };
    let d = cluster(
        "tls-app",
        &[("main", None)],
        &[("app", &["main"], Privileges::ReadOnly)],
    );

    // The server only accepts TLS, so success means the session was encrypted.
    let require =
        PostgresDatabaseClusters::from_connection_string(&dsn("127.0.0.1", "sslmode=require"))
            .expect("parses");
    require
        .create(&d)
        .await
        .expect("create over TLS (sslmode=require)");
    assert_up_to_date(&require, &d).await;

    // verify-full: chain and name (the certificate is for IP 127.0.0.1).
    let full = format!("sslmode=verify-full&sslrootcert={ca}");
    let verified =
        PostgresDatabaseClusters::from_connection_string(&dsn("127.0.0.1", &full)).expect("parses");
    assert_up_to_date(&verified, &d).await;
    // The same certificate presented for another name fails verify-full...
    let wrong_name =
        PostgresDatabaseClusters::from_connection_string(&dsn("localhost", &full)).expect("parses");
    assert!(
        matches!(
            wrong_name.observe(&d).await,
            Err(ProviderError::Unavailable { .. })
        ),
        "verify-full must check the host name"
    );
    // ...but passes verify-ca, which checks only the chain.
    let ca_only = format!("sslmode=verify-ca&sslrootcert={ca}");
    let chain = PostgresDatabaseClusters::from_connection_string(&dsn("localhost", &ca_only))
        .expect("parses");
    assert_up_to_date(&chain, &d).await;
    // A CA that did not sign the certificate is refused.
    let untrusted = PostgresDatabaseClusters::from_connection_string(&dsn(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={other_ca}"),
    ))
    .expect("parses");
    assert!(matches!(
        untrusted.observe(&d).await,
        Err(ProviderError::Unavailable { .. })
    ));

    // Without TLS the server refuses: terminal, the credentials/connection settings must change.
    let plain =
        PostgresDatabaseClusters::from_connection_string(&dsn("127.0.0.1", "sslmode=disable"))
            .expect("parses");
    let err = plain.observe(&d).await.expect_err("plaintext refused");
    assert!(err.is_terminal(), "{err:?}");
    assert!(!err.to_string().contains(pg.admin_password()));

    // A rotated password is drift over TLS too (checked against the stored
    // verifier, the admin being a superuser).
    let mut rotated = d.clone();
    rotated
        .passwords
        .insert("app".into(), Secret::new("another-password"));
    let (up_to_date, drift) = expect_exists(&verified, &rotated).await;
    assert!(
        !up_to_date && drift == vec!["password of user app".to_string()],
        "{drift:?}"
    );
}
