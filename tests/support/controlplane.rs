//! The local Kubernetes control plane for integration tests, started once
//! per test binary with the same scripts a person uses
//! (`hack/controlplane/start.sh`), torn down by the script's watchdog when
//! the test process exits — also on panic or abort.
//!
//! `ControlPlane::apiserver()` gives etcd + kube-apiserver (fast; no
//! CloudNativePG); `ControlPlane::full()` adds kube-controller-manager,
//! kube-scheduler, kwok (fake nodes play the kubelet, so pods become Running
//! and Ready, namespaces finish deleting and garbage collection runs) and
//! CloudNativePG (its CRDs, webhooks and manager, built from its Go module).
//!
//! Each test uses its own names and namespaces, so tests run in parallel on
//! one control plane. A kube `Client` is bound to the tokio runtime that
//! made it, so every test makes its own with [`ControlPlane::client`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;

pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    bin: PathBuf,
    /// bulkhead's CRDs installed (once per control plane: a test binary
    /// may use both).
    crds: OnceLock<()>,
}

static APISERVER: OnceLock<ControlPlane> = OnceLock::new();
static FULL: OnceLock<ControlPlane> = OnceLock::new();

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start(full: bool) -> ControlPlane {
    let tmp = std::env::temp_dir().join(format!(
        "bulkhead-test-cp-{}-{}",
        std::process::id(),
        if full { "full" } else { "api" }
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut cmd = Command::new(repo().join("hack/controlplane/start.sh"));
    cmd.arg("--dir")
        .arg(&tmp)
        .arg("--owner-pid")
        .arg(std::process::id().to_string());
    if full {
        cmd.args(["--with-controllers", "--with-kwok", "--with-cnpg"]);
    }
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run hack/controlplane/start.sh");
    assert!(
        out.status.success(),
        "hack/controlplane/start.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(tmp.join("env")).expect("control plane env file");
    let bin = env
        .lines()
        .find_map(|l| l.strip_prefix("BULKHEAD_CP_BIN="))
        .map(PathBuf::from)
        .expect("BULKHEAD_CP_BIN in env file");
    eprintln!(
        "control plane ({}) up in {:.1}s at {}",
        if full { "full" } else { "apiserver" },
        started.elapsed().as_secs_f64(),
        tmp.display()
    );
    ControlPlane {
        kubeconfig: tmp.join("kubeconfig"),
        dir: tmp,
        bin,
        crds: OnceLock::new(),
    }
}

impl ControlPlane {
    /// etcd + kube-apiserver, shared by the test binary.
    pub fn apiserver() -> &'static ControlPlane {
        APISERVER.get_or_init(|| start(false))
    }

    /// The apiserver plus controller-manager, scheduler and kwok.
    pub fn full() -> &'static ControlPlane {
        FULL.get_or_init(|| start(true))
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A client for the admin user, bound to the calling test's runtime.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig to config");
        Client::try_from(config).expect("kube client")
    }

    /// `kubectl` built with the control plane, pointed at it.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// `kubectl` under another identity's kubeconfig (e.g. a tenant's
    /// ServiceAccount token from [`ControlPlane::token_kubeconfig`]).
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .env("KUBECONFIG", kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// `kubectl apply -f -` of a manifest under another identity.
    pub fn apply_as(&self, kubeconfig: &Path, manifest: &str) -> Output {
        self.apply_with(kubeconfig, manifest, &[])
    }

    /// A token for a ServiceAccount (`kubectl create token`), and a
    /// kubeconfig that authenticates with it.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl_ok(&[
            "create",
            "token",
            name,
            "--namespace",
            namespace,
            "--duration",
            "2h",
        ]);
        self.token_kubeconfig(&token, &format!("{namespace}-{name}"))
    }

    /// `kubectl` that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a manifest; returns the output.
    pub fn apply_stdin(&self, manifest: &str, extra: &[&str]) -> Output {
        self.apply_with(&self.kubeconfig, manifest, extra)
    }

    fn apply_with(&self, kubeconfig: &Path, manifest: &str, extra: &[&str]) -> Output {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("kubectl"))
            .env("KUBECONFIG", kubeconfig)
            .args(["apply", "-f", "-"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("write manifest");
        child.wait_with_output().expect("kubectl apply")
    }

    /// Installs `crds/` once per control plane and waits until established.
    pub fn install_crds(&self) {
        self.crds.get_or_init(|| {
            self.kubectl_ok(&[
                "apply",
                "--server-side",
                "-f",
                &repo().join("crds").to_string_lossy(),
            ]);
            self.kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ]);
        });
    }

    /// Installs CloudNativePG's CRDs (from the module build.sh extracted)
    /// on a control plane started without them, and waits until they are
    /// established. No manager: objects are only validated and stored.
    pub fn install_cnpg_crds(&self) {
        let crds = self.bin.join("cnpg").join("crds");
        let crds = crds.to_string_lossy();
        self.kubectl_ok(&["apply", "--server-side", "-f", &crds]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &crds,
        ]);
    }

    /// The log of CloudNativePG's manager (JSON lines), for assertions and
    /// failure messages.
    pub fn cnpg_manager_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs").join("cnpg-manager.json")).unwrap_or_default()
    }

    /// Starts `bulkhead run` against this control plane as the admin user,
    /// without leader election, HTTP on a free port, a 20 s resync. The
    /// process is stopped when the returned handle drops, and by a watchdog
    /// if the test process dies first.
    pub fn start_operator(&self, args: &[&str]) -> Operator {
        let mut all = vec![
            "--http-addr",
            "127.0.0.1:0",
            "--leader-election=false",
            "--resync-seconds",
            "20",
        ];
        all.extend_from_slice(args);
        self.start_operator_as(&self.kubeconfig, &all)
    }

    /// Starts `bulkhead run` with exactly `args`, under `kubeconfig` (e.g.
    /// one made by [`ControlPlane::token_kubeconfig`]).
    pub fn start_operator_as(&self, kubeconfig: &Path, args: &[&str]) -> Operator {
        self.start_operator_env(kubeconfig, args, &[])
    }

    /// Starts `bulkhead run` as the chart's Deployment runs it, under
    /// `kubeconfig`: any free HTTP port, leader election with the Lease in
    /// `lease_namespace` as `identity`, a resync every `resync_seconds`, and
    /// `extra` args after those.
    pub fn start_leader_operator(
        &self,
        kubeconfig: &Path,
        lease_namespace: &str,
        identity: &str,
        resync_seconds: &str,
        extra: &[&str],
    ) -> Operator {
        let mut args = vec![
            "--http-addr",
            "127.0.0.1:0",
            "--leader-election=true",
            "--lease-namespace",
            lease_namespace,
            "--identity",
            identity,
            "--resync-seconds",
            resync_seconds,
        ];
        args.extend_from_slice(extra);
        self.start_operator_as(kubeconfig, &args)
    }

    /// [`ControlPlane::start_operator_as`] with environment changes on top
    /// (`None` removes a variable, e.g. `NO_COLOR` to see what a log file
    /// gets without it).
    pub fn start_operator_env(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Operator {
        self.install_crds();
        let log = self.dir.join(format!("operator-{}.log", unique()));
        let log_file = std::fs::File::create(&log).expect("operator log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
        cmd.arg("run")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("BULKHEAD_LOG_LEVEL", "info,kube=warn")
            .env("NO_COLOR", "1");
        for (key, value) in env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("start bulkhead run");
        watchdog(child.id());
        Operator { child, log }
    }

    /// A kubeconfig for a bearer token (e.g. a ServiceAccount's), with the
    /// server and CA of the admin kubeconfig.
    pub fn token_kubeconfig(&self, token: &str, name: &str) -> PathBuf {
        let admin: serde_json::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(&self.kubeconfig).expect("read admin kubeconfig"),
        )
        .expect("admin kubeconfig parses");
        let cluster = &admin["clusters"][0]["cluster"];
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "bulkhead", "cluster": {
                "server": cluster["server"],
                "certificate-authority-data": cluster["certificate-authority-data"],
            }}],
            "users": [{ "name": name, "user": { "token": token.trim() } }],
            "contexts": [{ "name": name, "context": { "cluster": "bulkhead", "user": name } }],
            "current-context": name,
        });
        let path = self.dir.join(format!("kubeconfig-{name}"));
        std::fs::write(
            &path,
            serde_yaml_ng::to_string(&config).expect("render kubeconfig"),
        )
        .expect("write kubeconfig");
        path
    }
}

/// Kills `pid` when this test process exits (normally, by panic or signal).
pub fn watchdog(pid: u32) {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -TERM {pid} 2>/dev/null; sleep 5; kill -KILL {pid} 2>/dev/null"
    );
    let _ = Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A running `bulkhead run`.
pub struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself (e.g. at a fail point).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(20))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A short unique suffix for names in parallel tests.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:x}{}",
        std::process::id() % 0xfff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` on the object until it returns true, or panics with the
/// last state seen after `timeout`.
pub async fn wait_for<K, F>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    mut check: F,
) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
    F: FnMut(&K) -> bool,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(Some(obj)) = api.get_opt(name).await {
            if check(&obj) {
                return obj;
            }
            last = Some(obj);
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {name}: {what}; last seen:\n{}",
                last.map(|o| serde_yaml_ng::to_string(&o).unwrap_or_default())
                    .unwrap_or_else(|| "<absent>".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls until `name` is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    while api.get_opt(name).await.ok().flatten().is_some() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {name} to be deleted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes `name` through `api` and waits until it is gone.
pub async fn delete_and_wait<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    wait_gone(api, name, timeout).await;
}

/// Deletes `name` through `api` and waits until it is back as a new object
/// (another uid), as a controller that repairs drift recreates it.
pub async fn delete_and_wait_recreated<K>(api: &Api<K>, name: &str, timeout: Duration, what: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let old = api
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get {name}: {e}"))
        .meta()
        .uid
        .clone();
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    wait_for(api, name, timeout, what, |o| o.meta().uid != old).await;
}

/// The condition of `type_` in a status condition list.
pub fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Creates an object from YAML with the typed API.
pub async fn create_yaml<K>(api: &Api<K>, yaml: &str) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let obj: K = serde_yaml_ng::from_str(yaml).expect("test manifest parses");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create test object")
}
