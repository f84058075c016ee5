//! What a resync of many DatabaseClusters costs the postgres provider, on a
//! real local PostgreSQL server (the one the tests use, started privately).
//!
//! Creates DatabaseClusters totalling 100 databases and 100 users through
//! the provider (10 clusters of 10 databases and 10 users; every user may
//! use every database of its cluster, with a few tables in each database),
//! then observes every cluster as a 30 s resync of the operator would
//! (4 at a time, a provider parsed from the admin connection string for
//! each call, as the controller does) and prints, per resync: the CPU
//! seconds of this process and of the PostgreSQL server's processes (user
//! and system time from /proc, the postmaster's reaped children included),
//! their sum as a fraction of one core at the resync period, and how many
//! connections the server accepted (`log_connections`, counted in its log),
//! and how many of bulkhead's sessions it holds afterwards.
//!
//! `cargo bench --bench postgres_resync`. Sizes and timing from the
//! environment: BULKHEAD_BENCH_PG_CLUSTERS (10), BULKHEAD_BENCH_PG_DATABASES
//! (100, in total), BULKHEAD_BENCH_PG_USERS (100, in total),
//! BULKHEAD_BENCH_PG_TABLES (per database, 3), BULKHEAD_BENCH_RESYNCS (3)
//! and BULKHEAD_BENCH_PERIOD_SECONDS (30: the time between resyncs, spent
//! idle, as the operator would; the CPU is measured over each resync's
//! observes only, so the server's own background work between them does not
//! count). Under `cargo test` it only checks that it builds.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bulkhead::api::database_cluster::Privileges;
use bulkhead::api::environment::Tier;
use bulkhead::provider::postgres::PostgresDatabaseClusters;
use bulkhead::provider::{DesiredDatabaseCluster, ExternalClient, Observation};
use futures::StreamExt;
use support::desired::desired_cluster;
use support::postgres::TestPostgres;
use support::procfs::{clock_ticks_per_second, ppid_and_ticks_with_children};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU ticks of the PostgreSQL server: the postmaster (with the children it
/// has reaped) plus every live child (backends, background workers).
fn server_ticks(postmaster: u32) -> u64 {
    let mut total = ppid_and_ticks_with_children(postmaster).map_or(0, |(_, t)| t);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some((ppid, ticks)) = ppid_and_ticks_with_children(pid)
                && ppid == postmaster
            {
                total += ticks;
            }
        }
    }
    total
}

fn own_ticks() -> u64 {
    ppid_and_ticks_with_children("self").map_or(0, |(_, t)| t)
}

/// Connections the server accepted so far (`connection received` lines).
fn connections(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.matches("connection received:").count())
        .unwrap_or(0)
}

/// Cluster `bench-<index>` with `databases` databases and `users` users,
/// each user on every database, privileges cycling through owner,
/// readWrite and readOnly.
fn cluster(index: usize, databases: usize, users: usize) -> DesiredDatabaseCluster {
    let external = format!("bench-{index}");
    let dbs: Vec<String> = (0..databases).map(|i| format!("db{i}")).collect();
    let mut d = desired_cluster(&external)
        .owned_by("bench", &external, &format!("uid-{external}"))
        .environment("bench", Tier::Testing);
    for name in &dbs {
        d = d.database(name, None);
    }
    for i in 0..users {
        let privileges = match i % 3 {
            0 => Privileges::Owner,
            1 => Privileges::ReadWrite,
            _ => Privileges::ReadOnly,
        };
        d = d.user(&format!("u{i}"), &dbs, privileges);
    }
    d.build()
}

/// Observes every cluster once, 4 at a time, each through a provider parsed
/// anew (as each reconcile does); returns how many were not up to date.
async fn resync(dsn: &str, clusters: &[DesiredDatabaseCluster]) -> Vec<String> {
    futures::stream::iter(clusters)
        .map(|d| async move {
            let p = PostgresDatabaseClusters::from_connection_string(dsn).expect("admin DSN");
            match p.observe(d).await {
                Ok(Observation::Exists {
                    up_to_date: true, ..
                }) => None,
                Ok(Observation::Exists { drift, .. }) => {
                    Some(format!("{}: {drift:?}", d.external_name))
                }
                Ok(Observation::Missing) => Some(format!("{}: missing", d.external_name)),
                Err(e) => Some(format!("{}: {e}", d.external_name)),
            }
        })
        .buffer_unordered(4)
        .filter_map(|r| async move { r })
        .collect()
        .await
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("postgres_resync: skipped (run with `cargo bench --bench postgres_resync`)");
        return;
    }
    let n_clusters = env_usize("BULKHEAD_BENCH_PG_CLUSTERS", 10).max(1);
    let n_dbs = env_usize("BULKHEAD_BENCH_PG_DATABASES", 100);
    let n_users = env_usize("BULKHEAD_BENCH_PG_USERS", 100);
    let tables = env_usize("BULKHEAD_BENCH_PG_TABLES", 3);
    let resyncs = env_usize("BULKHEAD_BENCH_RESYNCS", 3).max(1);
    let period = env_usize("BULKHEAD_BENCH_PERIOD_SECONDS", 30).max(1) as f64;
    let tck = clock_ticks_per_second();

    let pg = TestPostgres::start_new().await;
    let dsn = pg.admin_dsn();
    let log = pg
        .data_dir()
        .parent()
        .expect("server directory")
        .join("server.log");
    let postmaster: u32 = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("postmaster.pid");

    let clusters: Vec<DesiredDatabaseCluster> = (0..n_clusters)
        .map(|i| {
            cluster(
                i,
                n_dbs / n_clusters + usize::from(i < n_dbs % n_clusters),
                n_users / n_clusters + usize::from(i < n_users % n_clusters),
            )
        })
        .collect();
    let setup = Instant::now();
    // Set up under another application_name: other pools, so the first
    // measured resync opens its connections as after an operator start.
    let provider = PostgresDatabaseClusters::from_connection_string(&format!(
        "{dsn}&application_name=bulkhead-bench-setup"
    ))
    .expect("admin DSN");
    for d in &clusters {
        provider.create(d).await.expect("create");
    }
    // A few tables per database, created by its owner role (as an owner
    // user's migrations would), so grants have objects to cover.
    for d in &clusters {
        let prefix = d.external_name.replace('-', "_");
        for db in &d.databases {
            let client = pg.admin(&format!("{prefix}_{}", db.name)).await;
            let mut sql = format!("SET ROLE {prefix}_owner;");
            for t in 0..tables {
                sql.push_str(&format!(
                    "CREATE TABLE t{t} (id bigserial PRIMARY KEY, v text, at timestamptz DEFAULT now());"
                ));
            }
            client.batch_execute(&sql).await.expect("create tables");
        }
    }
    for d in &clusters {
        if !matches!(
            provider.observe(d).await.expect("observe"),
            Observation::Exists {
                up_to_date: true,
                ..
            }
        ) {
            provider
                .update(d, &Default::default())
                .await
                .expect("update");
        }
    }
    drop(provider);
    println!(
        "postgres_resync: {} clusters, {} databases, {} users in total ({} tables per database), set up in {:.1}s",
        clusters.len(),
        clusters.iter().map(|d| d.databases.len()).sum::<usize>(),
        clusters.iter().map(|d| d.users.len()).sum::<usize>(),
        tables,
        setup.elapsed().as_secs_f64()
    );

    // From here on the server logs every connection it accepts; the set-up's
    // pooled sessions go.
    let admin = pg.admin("postgres").await;
    for sql in [
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bulkhead-bench-setup'",
        "ALTER SYSTEM SET log_connections = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.expect("prepare the server");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>12} {:>12} {:>9}",
        "resync", "wall s", "bench cpu", "server cpu", "core @period", "connections", "sessions"
    );
    let mut sums = (0.0, 0.0, 0usize);
    // Resync 0 is the first on these pools (the connections are opened;
    // the stored password verifiers were already checked once during the
    // set-up), not counted in the mean.
    for round in 0..=resyncs {
        let started = Instant::now();
        let (own0, srv0, conn0) = (own_ticks(), server_ticks(postmaster), connections(&log));
        let drift = resync(&dsn, &clusters).await;
        let wall = started.elapsed();
        // Let the server write its log lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let own = (own_ticks() - own0) as f64 / tck;
        let srv = server_ticks(postmaster).saturating_sub(srv0) as f64 / tck;
        let opened = connections(&log) - conn0;
        assert!(drift.is_empty(), "not up to date: {drift:#?}");
        // Measured after the CPU: bulkhead's sessions the server holds.
        let held: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bulkhead'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        println!(
            "{:>8} {:>8.2} {:>10.2} {:>10.2} {:>11.1}% {:>12} {:>9}",
            if round == 0 {
                "first".to_string()
            } else {
                round.to_string()
            },
            wall.as_secs_f64(),
            own,
            srv,
            100.0 * (own + srv) / period,
            opened,
            held
        );
        if round > 0 {
            sums.0 += own;
            sums.1 += srv;
            sums.2 += opened;
        }
        if round < resyncs {
            tokio::time::sleep(Duration::from_secs_f64(period).saturating_sub(started.elapsed()))
                .await;
        }
    }
    let n = resyncs as f64;
    println!(
        "mean of {resyncs} resyncs: bench {:.2} CPU s + server {:.2} CPU s = {:.1}% of a core at a {period:.0} s resync; {:.0} connections opened per resync",
        sums.0 / n,
        sums.1 / n,
        100.0 * (sums.0 + sums.1) / n / period,
        sums.2 as f64 / n
    );
}
