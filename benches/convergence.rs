//! How fast the operator converges many objects, on the real local control
//! plane: N Environments (each a namespace with RoleBindings, a
//! NetworkPolicy, a quota and a ConfigMap) created at once, timed until all
//! are Ready, with 1 reconcile at a time versus the default 4. Prints both
//! wall times and their ratio, measured in one run, plus the operator's peak
//! resident memory.
//!
//! `cargo bench --bench convergence` (N from BULKHEAD_BENCH_ENVS, default 30).
//! Under `cargo test` it only checks that it builds.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bulkhead::api::{Environment, Organization};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use support::controlplane::{ControlPlane, unique};
use support::procfs::peak_rss_kib;

async fn run_once(cp: &ControlPlane, n: usize, concurrency: &str) -> (Duration, u64) {
    let client = cp.client().await;
    let tag = unique();
    let orgs: Api<Organization> = Api::all(client.clone());
    let envs: Api<Environment> = Api::all(client.clone());
    let org: Organization = serde_json::from_value(serde_json::json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Organization",
        "metadata": {"name": format!("bench-{tag}")},
        "spec": {"members": [{"email": "a@bench.example", "role": "admin"}], "billing": {"plan": "launch"}},
    }))
    .expect("org");
    orgs.create(&PostParams::default(), &org)
        .await
        .expect("create org");

    let operator = cp.start_operator(&["--concurrency", concurrency]);
    let started = Instant::now();
    for i in 0..n {
        let env: Environment = serde_json::from_value(serde_json::json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": format!("bench-{tag}-{i}"), "labels": {"bench": tag}},
            "spec": {"organizationRef": {"name": format!("bench-{tag}")}, "tier": "development",
                     "access": [{"role": "developer", "subjects": [{"kind": "Group", "name": "devs"}]}],
                     "config": {"data": {"K": "V"}}},
        }))
        .expect("env");
        envs.create(&PostParams::default(), &env)
            .await
            .expect("create env");
    }
    let lp = ListParams::default().labels(&format!("bench={tag}"));
    loop {
        let ready = envs
            .list(&lp)
            .await
            .expect("list")
            .items
            .iter()
            .filter(|e| {
                e.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "bench did not converge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let rss = peak_rss_kib(operator.pid());
    drop(operator);
    let _ = envs.delete_collection(&DeleteParams::default(), &lp).await;
    (took, rss)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("convergence: skipped (run with `cargo bench --bench convergence`)");
        return;
    }
    let n: usize = std::env::var("BULKHEAD_BENCH_ENVS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let cp = ControlPlane::full();
    cp.install_crds();
    let (serial, rss1) = run_once(cp, n, "1").await;
    let (parallel, rss4) = run_once(cp, n, "4").await;
    println!("convergence of {n} Environments on a local control plane (v1.37.2):");
    println!(
        "  --concurrency 1: {:>7.2}s  ({:.1} ms/Environment, peak RSS {} MiB)",
        serial.as_secs_f64(),
        serial.as_secs_f64() * 1000.0 / n as f64,
        rss1 / 1024
    );
    println!(
        "  --concurrency 4: {:>7.2}s  ({:.1} ms/Environment, peak RSS {} MiB)",
        parallel.as_secs_f64(),
        parallel.as_secs_f64() * 1000.0 / n as f64,
        rss4 / 1024
    );
    println!(
        "  speed-up (1 → 4): {:.2}x",
        serial.as_secs_f64() / parallel.as_secs_f64()
    );
}
