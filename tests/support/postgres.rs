//! Local PostgreSQL server for integration tests.
//!
//! `shared()` starts one server per test binary, lazily; `TestPostgres::start_new()`
//! starts a private one (for tests that stop and restart it). Each server
//! lives in its own temporary directory (data, unix socket, log), listens
//! only on 127.0.0.1 on a free port, and requires SCRAM passwords; the
//! superuser is `postgres` with a generated password.
//!
//! Binaries: `$BULKHEAD_PG_BIN`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `initdb` on PATH. When the tests run as
//! root the server runs as the `postgres` user (PostgreSQL refuses root).
//!
//! Teardown: a watchdog started with `setsid` waits for the test process to
//! exit (normally, by panic or by a signal), then stops the server
//! (`pg_ctl stop -m immediate`) and removes the directory, so no server is
//! ever left behind. Private instances are also stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::{Client, NoTls};

pub struct TestPostgres {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    /// The unprivileged user the server runs as, when the tests run as root.
    run_as: Option<String>,
    /// Private instances are torn down on drop.
    private: bool,
    /// With TLS: the CA that signed the server certificate.
    ca_file: Option<PathBuf>,
}

static SHARED: OnceLock<TestPostgres> = OnceLock::new();

/// The binary-wide server, started on first use.
pub async fn shared() -> &'static TestPostgres {
    if let Some(pg) = SHARED.get() {
        return pg;
    }
    let started = tokio::task::spawn_blocking(|| {
        SHARED.get_or_init(|| {
            TestPostgres::start_blocking(false, false).expect("start the shared PostgreSQL")
        });
    })
    .await;
    started.expect("PostgreSQL start-up task");
    SHARED.get().expect("shared PostgreSQL initialised")
}

fn command_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn find_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("BULKHEAD_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = command_output(Command::new("pg_config").arg("--bindir")) {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return bin;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() {
                return dir;
            }
        }
    }
    panic!(
        "PostgreSQL server binaries not found: install postgresql or set BULKHEAD_PG_BIN to the directory holding initdb"
    );
}

fn is_root() -> bool {
    command_output(Command::new("id").arg("-u")).as_deref() == Some("0")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// `openssl req` making a new P-256 key into `key` and its request (or,
/// with `-x509` in `mode`, a self-signed certificate) into `out`.
fn new_p256_key(dir: &Path, mode: &[&str], key: &Path, out: &Path, rest: &[&str]) {
    let mut args = vec!["req"];
    args.extend_from_slice(mode);
    args.extend_from_slice(&[
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        path_str(key),
        "-out",
        path_str(out),
    ]);
    args.extend_from_slice(rest);
    openssl(dir, &args);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (needed for the TLS test server)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn random_password() -> String {
    bulkhead::provider::generate_password().expose().to_string()
}

impl TestPostgres {
    /// A private server (e.g. to stop and restart without disturbing
    /// parallel tests). Stopped and removed when dropped.
    pub async fn start_new() -> TestPostgres {
        tokio::task::spawn_blocking(|| {
            TestPostgres::start_blocking(true, false).expect("start a private PostgreSQL")
        })
        .await
        .expect("PostgreSQL start-up task")
    }

    /// A private server that accepts TLS connections only (`hostssl` in
    /// pg_hba.conf), with a certificate for IP 127.0.0.1 signed by a test CA
    /// ([`TestPostgres::ca_file`]); made with the `openssl` command.
    pub async fn start_new_tls() -> TestPostgres {
        tokio::task::spawn_blocking(|| {
            TestPostgres::start_blocking(true, true).expect("start a TLS PostgreSQL")
        })
        .await
        .expect("PostgreSQL start-up task")
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_file(&self) -> &Path {
        self.ca_file
            .as_deref()
            .expect("a server started with start_new_tls")
    }

    /// Makes a self-signed CA in the server's directory; returns its PEM
    /// path. `name` tells CAs apart.
    pub fn make_ca(&self, name: &str) -> PathBuf {
        let ca_key = self.dir.join(format!("{name}.key"));
        let ca = self.dir.join(format!("{name}.pem"));
        let subject = format!("/CN=bulkhead test {name}");
        new_p256_key(
            &self.dir,
            &["-x509"],
            &ca_key,
            &ca,
            &[
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        ca
    }

    /// A CA, a server certificate for 127.0.0.1 signed by it, `ssl = on`
    /// and `hostssl` only.
    fn setup_tls(&mut self, uid_gid: Option<(u32, u32)>) -> Result<(), String> {
        let ca = self.make_ca("ca");
        let ca_key = self.dir.join("ca.key");
        let key = self.data.join("server.key");
        let csr = self.dir.join("server.csr");
        let cert = self.data.join("server.crt");
        let ext = self.dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| format!("write {}: {e}", ext.display()))?;
        new_p256_key(&self.dir, &[], &key, &csr, &["-subj", "/CN=127.0.0.1"]);
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&ca),
                "-CAkey",
                path_str(&ca_key),
                "-CAcreateserial",
                "-out",
                path_str(&cert),
                "-days",
                "2",
                "-extfile",
                path_str(&ext),
            ],
        );
        for file in [&key, &cert] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod: {e}"))?;
            if let Some((uid, gid)) = uid_gid {
                std::os::unix::fs::chown(file, Some(uid), Some(gid))
                    .map_err(|e| format!("chown: {e}"))?;
            }
        }
        let hba_path = self.data.join("pg_hba.conf");
        let hba =
            std::fs::read_to_string(&hba_path).map_err(|e| format!("read pg_hba.conf: {e}"))?;
        let hba: Vec<String> = hba
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}"),
                None => l.to_string(),
            })
            .collect();
        std::fs::write(&hba_path, hba.join("\n") + "\n")
            .map_err(|e| format!("write pg_hba.conf: {e}"))?;
        self.ca_file = Some(ca);
        Ok(())
    }

    fn start_blocking(private: bool, tls: bool) -> Result<TestPostgres, String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let bin = find_bin();
        let run_as = if is_root() {
            // The Debian package creates `postgres`; nobody is the fallback.
            let user = ["postgres", "nobody"]
                .into_iter()
                .find(|u| command_output(Command::new("id").arg("-u").arg(u)).is_some())
                .ok_or("running as root and neither user postgres nor nobody exists")?;
            Some(user.to_string())
        } else {
            None
        };
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "bulkhead-pg-{}-{n}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let password = random_password();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))
            .map_err(|e| format!("write pwfile: {e}"))?;
        let mut uid_gid = None;
        if let Some(user) = &run_as {
            let uid: u32 = command_output(Command::new("id").arg("-u").arg(user))
                .and_then(|s| s.parse().ok())
                .ok_or("uid of the server user")?;
            let gid: u32 = command_output(Command::new("id").arg("-g").arg(user))
                .and_then(|s| s.parse().ok())
                .ok_or("gid of the server user")?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown: {e}"))?;
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
                .map_err(|e| format!("chown: {e}"))?;
            uid_gid = Some((uid, gid));
        }
        let data = dir.join("data");
        let mut pg = TestPostgres {
            dir,
            data,
            bin,
            port: 0,
            password,
            run_as,
            private,
            ca_file: None,
        };
        pg.spawn_watchdog();

        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let _ = std::fs::remove_file(&pwfile);
        if tls {
            pg.setup_tls(uid_gid)?;
        }
        let mut last_error = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            let conf = format!(
                "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\nssl = {}\n",
                pg.port,
                pg.dir.display(),
                if tls { "on" } else { "off" }
            );
            let conf_path = pg.data.join("postgresql.auto.conf");
            std::fs::write(&conf_path, conf).map_err(|e| format!("write config: {e}"))?;
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(e) => last_error = e,
            }
        }
        Err(format!("PostgreSQL did not start: {last_error}"))
    }

    /// A command for one of the server binaries, as the server user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    fn spawn_watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let runner = match &self.run_as {
            Some(user) => format!("runuser -u {user} --"),
            None => String::new(),
        };
        let script = format!(
            "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; {runner} \"$2\" -D \"$3\" stop -m immediate -w >/dev/null 2>&1; rm -rf \"$4\""
        );
        let spawned = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(script)
            .arg("bulkhead-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(&pg_ctl)
            .arg(&self.data)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            panic!("start the PostgreSQL watchdog (setsid): {e}");
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            Err(format!(
                "pg_ctl start: {} {log}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Stops the server (fast shutdown). Only for private instances.
    pub fn stop(&self) {
        assert!(
            self.private,
            "stop() the shared server would break parallel tests: use start_new()"
        );
        self.pg_ctl_stop("fast");
    }

    /// Starts a stopped server again on the same port.
    pub fn start(&self) {
        self.pg_ctl_start().expect("restart PostgreSQL");
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn admin_password(&self) -> &str {
        &self.password
    }

    /// The superuser's connection string, as it would sit in a Secret.
    pub fn admin_dsn(&self) -> String {
        format!(
            "postgres://postgres:{}@{}:{}/postgres?sslmode=disable",
            self.password,
            self.host(),
            self.port
        )
    }

    /// Connects as `user` with `password` to `db`.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host())
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(std::time::Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A superuser session on `db`.
    pub async fn admin(&self, db: &str) -> Client {
        self.connect_as("postgres", &self.password, db)
            .await
            .unwrap_or_else(|e| panic!("connect as postgres to {db}: {e}"))
    }

    /// Runs `sql` (one or more statements) as `user`; the server's error if any.
    pub async fn sql_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let client = self.connect_as(user, password, db).await?;
        client.batch_execute(sql).await
    }
}

/// Whether `sql` (a catalog query, say) finds no row.
pub async fn no_rows(client: &Client, sql: &str) -> bool {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .is_empty()
}

/// The single number a `SELECT count(*) …` query answers.
pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.private {
            self.pg_ctl_stop("immediate");
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
