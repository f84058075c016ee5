//! Pooled admin sessions, one small pool per (server, admin credentials,
//! TLS settings, database), shared by every provider built from the same
//! connection string (the controller builds one per reconcile).
//!
//! - Size: [`ADMIN_POOL_SIZE`] sessions on the maintenance database,
//!   [`DATABASE_POOL_SIZE`] on each other database (one is enough for one
//!   reconcile; clusters never share a database).
//! - A session is checked before it is handed out (closed, or an empty
//!   query fails: it is dropped and another one opened), and a session on
//!   which anything failed, or that was dropped in the middle of a
//!   statement, is closed instead of returned.
//! - Sessions idle for [`IDLE_TIMEOUT`] are closed, and pools left empty
//!   that long are forgotten (so the pool of a dropped database goes away).
//!   A sweep runs at most every [`SWEEP_EVERY`] on use, and from a
//!   background task while there are pools. A pool for a new admin password
//!   (a rotated credential) closes the pools of the old one at once.
//! - The server keeps up to one idle session per database bulkhead manages
//!   there (plus the admin ones). When it refuses a connection for having
//!   none to spare (`too many clients`), bulkhead closes its idle sessions
//!   on that server's other databases and tries once more, so a server with
//!   little headroom costs reconnects instead of failures.
//! - Connecting keeps the behaviour of a fresh connection: the connect
//!   timeout, `lock_timeout`, TLS as `sslmode` asks, and the same error
//!   classification (never quoting a secret). Catalog queries are prepared
//!   once per session and planned once (`plan_cache_mode =
//!   force_generic_plan` on PostgreSQL 12 and later).
//!
//! The key holds a fingerprint of the admin password, never the password,
//! and its Debug omits even that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conn::{CONNECT_TIMEOUT, classify};
use super::passwords::Fingerprint;
use crate::provider::ProviderError;
use crate::reasons;

/// Sessions per server on the maintenance database (the operator's default
/// concurrency).
pub const ADMIN_POOL_SIZE: usize = 4;
/// Sessions per server on each other database.
pub const DATABASE_POOL_SIZE: usize = 2;
/// Idle sessions are closed after this long: longer than the default resync
/// (300 s), so a steady state opens no connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often idle sessions are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How long a call waits for a free session of a busy pool.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that tells one admin connection from another.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub user: String,
    pub sslmode: &'static str,
    pub root_cert: Option<String>,
    pub options: String,
    pub application_name: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub password: Option<Fingerprint>,
    pub dbname: String,
}

impl std::fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolKey")
            .field("hosts", &self.hosts)
            .field("ports", &self.ports)
            .field("user", &self.user)
            .field("sslmode", &self.sslmode)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

struct Entry {
    pool: Pool,
    used: Instant,
}

struct Registry {
    pools: HashMap<PoolKey, Entry>,
    swept: Instant,
    reaper: Option<tokio::task::JoinHandle<()>>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        pools: HashMap::new(),
        swept: Instant::now(),
        reaper: None,
    })
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sweep(reg: &mut Registry) {
    reg.swept = Instant::now();
    reg.pools.retain(|_, entry| {
        entry
            .pool
            .retain(|_, metrics| metrics.last_used() < IDLE_TIMEOUT);
        entry.pool.status().size > 0 || entry.used.elapsed() < IDLE_TIMEOUT
    });
}

/// The runtime pooled connections live on: one worker thread of its own,
/// so a pooled connection does not depend on whichever runtime the caller
/// that opened it ran on (several runtimes in one process, as in tests,
/// would otherwise close each other's connections when one ends). `None`
/// if it cannot be started: then the caller's runtime is used.
static BACKGROUND: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bulkhead-postgres")
        .enable_all()
        .build()
        .map_err(|e| tracing::warn!(error = %e, "no runtime of its own for pooled PostgreSQL connections"))
        .ok()
});

/// Keeps a background sweep running while there are pools.
fn ensure_reaper(reg: &mut Registry) {
    if reg.reaper.as_ref().is_some_and(|h| !h.is_finished()) {
        return;
    }
    let handle = match BACKGROUND.as_ref() {
        Some(rt) => rt.handle().clone(),
        None => match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle,
            Err(_) => return,
        },
    };
    reg.reaper = Some(handle.spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let mut reg = registry();
            sweep(&mut reg);
            if reg.pools.is_empty() {
                reg.reaper = None;
                return;
            }
        }
    }));
}

/// Generic plans for a session's prepared statements (PostgreSQL 12 and
/// later; older servers have no such setting and plan as before).
const GENERIC_PLANS: &str = "SELECT set_config('plan_cache_mode', 'force_generic_plan', false) WHERE current_setting('server_version_num')::int >= 120000";

type Connected = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

/// Opens connections like a fresh admin connection does (the pool adds the
/// timeout around it), on [`BACKGROUND`].
struct Connector {
    tls: MakeRustlsConnect,
}

async fn open(config: Config, tls: MakeRustlsConnect) -> Result<Connected, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "pooled postgres connection ended");
        }
    });
    // The catalog queries run once per resync on each session: planning
    // them anew each time (custom plans) would cost more than running them.
    client.batch_execute(GENERIC_PLANS).await?;
    Ok((client, task))
}

impl deadpool_postgres::Connect for Connector {
    fn connect(&self, config: &Config) -> BoxFuture<'_, Result<Connected, tokio_postgres::Error>> {
        let tls = self.tls.clone();
        let config = config.clone();
        Box::pin(async move {
            if let Some(rt) = BACKGROUND.as_ref() {
                // A JoinError means that runtime is gone: connect here.
                if let Ok(opened) = rt.spawn(open(config.clone(), tls.clone())).await {
                    return opened;
                }
            }
            open(config, tls).await
        })
    }
}

fn build(
    config: &Config,
    tls: &MakeRustlsConnect,
    dbname: &str,
    size: usize,
) -> Result<Pool, ProviderError> {
    let mut config = config.clone();
    config.dbname(dbname);
    let manager = Manager::from_connect(
        config,
        Connector { tls: tls.clone() },
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(1)))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .wait_timeout(Some(WAIT_TIMEOUT))
        .build()
        .map_err(|e| ProviderError::unavailable(format!("PostgreSQL connection pool: {e}")))
}

/// A session from the pool of `key` (created with room for `size`
/// sessions on first use). `host_port` names the server in messages.
pub async fn session(
    config: &Config,
    tls: &MakeRustlsConnect,
    key: PoolKey,
    size: usize,
    host_port: (&str, u16),
) -> Result<Session, ProviderError> {
    let pool = {
        let mut reg = registry();
        if reg.swept.elapsed() >= SWEEP_EVERY {
            sweep(&mut reg);
        }
        let pool = match reg.pools.get_mut(&key) {
            Some(entry) => {
                entry.used = Instant::now();
                entry.pool.clone()
            }
            None => {
                let pool = build(config, tls, &key.dbname, size)?;
                // Another admin password for the same connection: the
                // credential was rotated, the old pool is of no more use.
                reg.pools.retain(|other, entry| {
                    let stale = other.password != key.password
                        && PoolKey {
                            password: key.password,
                            ..other.clone()
                        } == key;
                    if stale {
                        entry.pool.close();
                    }
                    !stale
                });
                reg.pools.insert(
                    key.clone(),
                    Entry {
                        pool: pool.clone(),
                        used: Instant::now(),
                    },
                );
                pool
            }
        };
        ensure_reaper(&mut reg);
        pool
    };
    let dbname = &key.dbname;
    let mut got = pool.get().await;
    if let Err(PoolError::Backend(e)) = &got
        && e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS)
    {
        // The server is out of connections: give back the idle sessions
        // bulkhead holds there on other databases, and try once more.
        let closed = close_idle_on_server(&key);
        if closed > 0 {
            tracing::info!(
                closed,
                "PostgreSQL server has no connection to spare: closed idle pooled sessions"
            );
            // Let the server see those sockets close.
            tokio::time::sleep(Duration::from_millis(200)).await;
            got = pool.get().await;
        }
    }
    match got {
        Ok(obj) => Ok(Session {
            obj: Some(obj),
            broken: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }),
        Err(PoolError::Backend(e)) => {
            Err(classify(&e, &format!("connecting to database {dbname}")))
        }
        Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => {
            Err(ProviderError::transient(
                reasons::DATABASE_BUSY,
                format!(
                    "every pooled session to {}:{} (database {dbname}) stayed busy for {}s",
                    host_port.0,
                    host_port.1,
                    WAIT_TIMEOUT.as_secs()
                ),
            ))
        }
        Err(PoolError::Timeout(_)) => Err(ProviderError::unavailable(format!(
            "PostgreSQL unavailable: connecting to {}:{} (database {dbname}) timed out after {}s",
            host_port.0,
            host_port.1,
            CONNECT_TIMEOUT.as_secs()
        ))),
        Err(e) => Err(ProviderError::unavailable(format!(
            "PostgreSQL unavailable: connecting to {}:{} (database {dbname}): {e}",
            host_port.0, host_port.1
        ))),
    }
}

/// Closes the idle sessions of every other pool on `key`'s server; returns
/// how many.
fn close_idle_on_server(key: &PoolKey) -> usize {
    let reg = registry();
    reg.pools
        .iter()
        .filter(|(other, _)| other.hosts == key.hosts && other.ports == key.ports && *other != key)
        .map(|(_, entry)| entry.pool.retain(|_, _| false).removed.len())
        .sum()
}

/// Closes the idle sessions to `key`'s database and forgets its pool (before
/// the database is dropped).
pub fn forget(key: &PoolKey) {
    let removed = registry().pools.remove(key);
    if let Some(entry) = removed {
        entry.pool.close();
    }
}

/// A pooled admin session. Statements go through it so that one that fails
/// (or is abandoned half-way) keeps the session out of the pool.
pub struct Session {
    obj: Option<deadpool_postgres::Object>,
    broken: AtomicBool,
    in_flight: AtomicUsize,
}

impl Session {
    fn client(&self) -> Result<&deadpool_postgres::Object, tokio_postgres::Error> {
        // `obj` is only taken in Drop.
        match &self.obj {
            Some(obj) => Ok(obj),
            None => unreachable!("a session's connection is taken only when it is dropped"),
        }
    }

    async fn run<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = work.await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if result.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        result
    }

    /// A query with parameters, prepared once per session.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.run(async {
            let client = self.client()?;
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await
    }

    /// A statement with parameters, not cached (run rarely).
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.run(async { self.client()?.execute(sql, params).await })
            .await
    }

    /// One or more statements in the simple query protocol.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.run(async { self.client()?.batch_execute(sql).await })
            .await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let reusable =
            !self.broken.load(Ordering::SeqCst) && self.in_flight.load(Ordering::SeqCst) == 0;
        if let Some(obj) = self.obj.take()
            && !reusable
        {
            // Out of the pool; dropping the connection closes it.
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}
