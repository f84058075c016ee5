//! `helm` from the control plane's binaries, with its caches in a scratch
//! directory, and the chart installed once per test binary.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::controlplane::{ControlPlane, repo};

/// Release name and namespace the test binaries install the chart as (the
/// README's `helm install bulkhead charts/bulkhead -n bulkhead-system`).
pub const RELEASE: &str = "bulkhead";
pub const NAMESPACE: &str = "bulkhead-system";

/// The operator's ServiceAccount as the chart names it.
pub fn operator_user() -> String {
    format!("system:serviceaccount:{NAMESPACE}:{RELEASE}")
}

/// `helm` from `bin`, pointed at `kubeconfig` when given (otherwise at no
/// cluster at all).
pub fn helm_in(bin: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let home = std::env::temp_dir().join(format!("bulkhead-helm-{}", std::process::id()));
    let mut cmd = Command::new(bin.join("helm"));
    cmd.args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null());
    match kubeconfig {
        Some(k) => cmd.env("KUBECONFIG", k),
        None => cmd.env("KUBECONFIG", home.join("no-kubeconfig")),
    };
    cmd.output().expect("run helm")
}

/// `helm install bulkhead charts/bulkhead -n bulkhead-system
/// --create-namespace --wait` into `cp`, once per test binary; what helm
/// printed (NOTES.txt included).
pub fn install_chart(cp: &ControlPlane) -> &'static str {
    static INSTALLED: OnceLock<String> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let chart = repo().join("charts").join("bulkhead");
        let out = helm_in(
            cp.bin(),
            Some(cp.kubeconfig()),
            &[
                "install",
                RELEASE,
                chart.to_str().expect("utf-8 path"),
                "--namespace",
                NAMESPACE,
                "--create-namespace",
                "--wait",
                "--timeout",
                "180s",
            ],
        );
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "helm install failed:\n{printed}");
        printed
    })
}
