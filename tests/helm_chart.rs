//! The Helm chart in `charts/bulkhead`, checked with the real `helm` and a
//! real apiserver: it lints, renders hardened manifests the apiserver
//! accepts, rejects bad values through `values.schema.json`, installs every
//! object, and its RBAC is exactly enough for the operator to take the
//! examples to Ready and back out again under the chart's ServiceAccount.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bulkhead::api::{DatabaseCluster, Environment, Organization};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use support::controlplane::{
    ControlPlane, condition, delete_and_wait, repo, unique, wait_for, wait_gone,
};

use support::helm::{NAMESPACE, RELEASE};
use support::objects::{Conditions, all_events, cnpg_cluster_healthy, exists};
const WAIT: Duration = Duration::from_secs(120);

fn chart() -> PathBuf {
    repo().join("charts").join("bulkhead")
}

/// The directory holding `helm` (and `kubectl`), built or reused by
/// `hack/controlplane/build.sh`, without starting a control plane.
fn tools() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(repo().join("hack/controlplane/build.sh"))
            .args(["helm", "kubectl"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run hack/controlplane/build.sh");
        assert!(out.status.success(), "build.sh helm kubectl failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build.sh prints the bin dir")
                .trim(),
        )
    })
}

/// `helm` with its caches in a scratch directory, pointed at `kubeconfig`
/// when given (otherwise at no cluster, so it never reaches one by accident).
fn helm(kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    support::helm::helm_in(tools(), kubeconfig, args)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm template` that must succeed; returns the manifests.
fn template(args: &[&str]) -> String {
    let chart = chart();
    let mut all = vec![
        "template",
        RELEASE,
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        NAMESPACE,
    ];
    all.extend_from_slice(args);
    let out = helm(None, &all);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}",
        all.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every non-empty YAML document.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn chart_crds_are_byte_identical_to_the_repository_crds() {
    let list = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    let repo_crds = repo().join("crds");
    let chart_crds = chart().join("crds");
    assert_eq!(
        list(&chart_crds),
        list(&repo_crds),
        "charts/bulkhead/crds/ must hold exactly the files of crds/; run `cp crds/*.yaml charts/bulkhead/crds/`"
    );
    for name in list(&repo_crds) {
        let a = std::fs::read(repo_crds.join(&name)).expect("read crds/ file");
        let b = std::fs::read(chart_crds.join(&name)).expect("read chart CRD");
        assert!(
            a == b,
            "charts/bulkhead/crds/{name} differs from crds/{name}; run `cp crds/*.yaml charts/bulkhead/crds/`"
        );
    }
}

#[test]
fn chart_environment_roles_match_the_operator() {
    let docs = documents(&template(&[
        "--show-only",
        "templates/environment-clusterroles.yaml",
    ]));
    let expected = bulkhead::controller::roles::environment_cluster_roles();
    assert_eq!(
        docs.len(),
        expected.len(),
        "the chart ships the same ClusterRoles as src/controller/roles.rs"
    );
    for want in &expected {
        let name = want["metadata"]["name"].as_str().expect("role name");
        let got = find(&docs, "ClusterRole", name)
            .unwrap_or_else(|| panic!("the chart has no ClusterRole {name}"));
        assert_eq!(
            got["rules"], want["rules"],
            "rules of {name} differ between the chart and src/controller/roles.rs"
        );
        assert_eq!(
            got["aggregationRule"], want["aggregationRule"],
            "aggregationRule of {name} differs between the chart and src/controller/roles.rs"
        );
        for (key, value) in want["metadata"]["labels"].as_object().expect("labels") {
            assert_eq!(
                &got["metadata"]["labels"][key], value,
                "label {key} of {name}: the operator applies it, so the chart must agree"
            );
        }
    }
}

#[test]
fn helm_lint_is_clean() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    for extra in [
        vec![],
        vec!["--set", "replicas=3"],
        vec![
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "logFormat=text",
        ],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra.iter().copied());
        let out = helm(None, &args);
        let output = text(&out);
        assert!(
            out.status.success(),
            "helm {} failed:\n{output}",
            args.join(" ")
        );
        assert!(
            output.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{output}"
        );
        assert!(
            !output.contains("[WARNING]") && !output.contains("[ERROR]"),
            "helm {} is not clean:\n{output}",
            args.join(" ")
        );
    }
}

#[test]
fn values_schema_rejects_bad_values() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 8] = [
        (&["--set", "replicas=-1"], "/replicas"),
        (&["--set", "logFormat=xml"], "/logFormat"),
        (
            &[
                "--set",
                "replicas=2",
                "--set",
                "leaderElection.enabled=false",
            ],
            "/leaderElection/enabled",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (
            &["--set", "leaderElection.leaseDuration=0"],
            "/leaderElection/leaseDuration",
        ),
        (&["--set", "httpPort=70000"], "/httpPort"),
        (&["--set", "replicaCount=2"], "replicaCount"),
        (
            &["--set-string", "resources.limits.memory=lots"],
            "/resources/limits/memory",
        ),
    ];
    for (values, path) in cases {
        let mut args = vec!["template", RELEASE, chart];
        args.extend_from_slice(values);
        let out = helm(None, &args);
        let output = text(&out);
        assert!(
            !out.status.success(),
            "helm template {} was accepted",
            values.join(" ")
        );
        assert!(
            output.contains("values don't meet the specifications of the schema"),
            "helm template {}: not a schema error:\n{output}",
            values.join(" ")
        );
        assert!(
            output.contains(path),
            "helm template {}: the error does not name {path}:\n{output}",
            values.join(" ")
        );
    }
    // Good values still render.
    template(&[
        "--set",
        "replicas=0",
        "--set",
        "logFormat=text",
        "--set",
        "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// A rendered container's arguments.
fn container_args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn rendered_deployment_is_hardened_and_wired() {
    let docs = documents(&template(&[]));
    let deployment = find(&docs, "Deployment", RELEASE).expect("Deployment bulkhead");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(deployment);

    assert_eq!(pod["serviceAccountName"], RELEASE);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource} is set"
            );
        }
    }
    assert_eq!(
        c["image"], "bulkhead:0.1.0",
        "image tag defaults to appVersion"
    );

    // Probes hit the operator's HTTP port.
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");

    // Identity and Lease namespace come from the downward API.
    let env = c["env"].as_array().expect("env");
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("env {name}"));
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    let args = container_args(c);
    for want in [
        "--log-format=json",
        "--log-level=info",
        "--leader-election=true",
        "--http-addr=0.0.0.0:8080",
    ] {
        assert!(args.contains(&want), "args {args:?} lack {want}");
    }

    // Values flow into the arguments.
    let docs = documents(&template(&[
        "--set",
        "logFormat=text",
        "--set",
        "logLevel=bulkhead=debug\\,kube=warn",
        "--set",
        "httpPort=9090",
    ]));
    let c = container(find(&docs, "Deployment", RELEASE).expect("Deployment"));
    let args = container_args(c);
    assert!(args.contains(&"--log-format=text"), "{args:?}");
    assert!(
        args.contains(&"--log-level=bulkhead=debug,kube=warn"),
        "{args:?}"
    );
    assert!(args.contains(&"--http-addr=0.0.0.0:9090"), "{args:?}");
    assert_eq!(c["ports"][0]["containerPort"], 9090);
}

#[test]
fn optional_objects_follow_values() {
    let default = kinds(&documents(&template(&[])));
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ] {
        assert!(default.contains(&kind.to_string()), "{kind} missing");
    }
    for kind in ["PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"] {
        assert!(
            !default.contains(&kind.to_string()),
            "{kind} rendered by default"
        );
    }

    let docs = documents(&template(&[
        "--set",
        "replicas=2",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
    ]));
    let pdb = find(&docs, "PodDisruptionBudget", RELEASE).expect("PDB with 2 replicas");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let deployment = find(&docs, "Deployment", RELEASE).expect("Deployment");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let sm = find(&docs, "ServiceMonitor", RELEASE).expect("ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let service = find(&docs, "Service", "bulkhead-metrics").expect("metrics Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "http-metrics");
    let np = find(&docs, "NetworkPolicy", RELEASE).expect("NetworkPolicy");
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "http");
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
}

#[test]
fn operator_cluster_role_has_no_wildcards() {
    let docs = documents(&template(&[]));
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    assert!(
        roles.len() >= 10,
        "every role the chart ships: {}",
        roles.len()
    );
    for role in roles {
        let (kind, name) = (&role["kind"], &role["metadata"]["name"]);
        for rule in role["rules"].as_array().into_iter().flatten() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                for item in rule[field].as_array().into_iter().flatten() {
                    let item = item.as_str().unwrap_or_default();
                    assert!(!item.contains('*'), "{kind} {name}: wildcard in {rule}");
                }
            }
        }
    }
}

#[tokio::test]
async fn rendered_chart_passes_server_side_dry_run() {
    let cp = ControlPlane::apiserver();
    let ns = format!("bulkhead-dry-{}", unique());
    cp.kubectl_ok(&["create", "namespace", &ns]);
    let chart = chart();
    for extra in [
        vec![],
        vec![
            "--set",
            "replicas=3",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "logFormat=text",
        ],
    ] {
        let mut args = vec![
            "template",
            RELEASE,
            chart.to_str().expect("utf-8 path"),
            "--namespace",
            &ns,
            "--include-crds",
        ];
        args.extend(extra.iter().copied());
        let out = helm(Some(cp.kubeconfig()), &args);
        assert!(out.status.success(), "{}", text(&out));
        let manifests = String::from_utf8_lossy(&out.stdout).into_owned();
        let applied = cp.apply_stdin(&manifests, &["--dry-run=server"]);
        let output = text(&applied);
        assert!(
            applied.status.success(),
            "kubectl apply --dry-run=server rejected the chart ({}):\n{output}",
            extra.join(" ")
        );
        // kubectl names each object `<kind>[.<group>]/<name>`.
        for doc in documents(&manifests) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_lowercase();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let created = format!("/{name} created (server dry run)");
            assert!(
                output.lines().any(|l| (l.starts_with(&format!("{kind}/"))
                    || l.starts_with(&format!("{kind}.")))
                    && l.ends_with(&created)),
                "{kind} {name} not created by the dry run:\n{output}"
            );
        }
    }
}

/// `helm install` into the full control plane, once per test binary.
fn installed() -> &'static ControlPlane {
    let cp = ControlPlane::full();
    let notes = support::helm::install_chart(cp);
    assert!(
        notes.contains(&format!("bulkhead 0.1.0 is installed as release {RELEASE}")),
        "NOTES.txt is shown:\n{notes}"
    );
    cp
}

/// `name` through `api`; the test fails, naming `what`, if it is not there.
async fn must_get<K>(api: &Api<K>, name: &str, what: &str) -> K
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get(name)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[tokio::test]
async fn helm_install_creates_every_object() {
    let cp = installed();
    let client = cp.client().await;

    let status = helm(
        Some(cp.kubeconfig()),
        &["status", RELEASE, "--namespace", NAMESPACE],
    );
    assert!(
        text(&status).contains("STATUS: deployed"),
        "{}",
        text(&status)
    );

    // kwok plays the kubelet: the pod is scheduled and reported Ready.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deployment = wait_for(&deployments, RELEASE, WAIT, "available", |d| {
        d.status
            .as_ref()
            .is_some_and(|s| s.available_replicas == Some(1))
    })
    .await;
    assert_eq!(
        deployment
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
        Some(RELEASE)
    );
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    must_get(&sa, RELEASE, "ServiceAccount").await;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let service = must_get(&services, "bulkhead-metrics", "metrics Service").await;
    assert_eq!(
        service
            .spec
            .and_then(|s| s.ports)
            .and_then(|p| p.first().map(|p| p.port)),
        Some(8080)
    );
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    must_get(&cluster_roles, RELEASE, "operator ClusterRole").await;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = must_get(&bindings, RELEASE, "ClusterRoleBinding").await;
    let subject = &binding.subjects.unwrap_or_default()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", RELEASE, Some(NAMESPACE))
    );
    let roles: Api<Role> = Api::namespaced(client.clone(), NAMESPACE);
    let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), NAMESPACE);
    let election = "bulkhead-leader-election";
    must_get(&roles, election, "leader election Role").await;
    must_get(&role_bindings, election, "leader election RoleBinding").await;
    for role in ["admin", "developer", "tester", "viewer"] {
        let name = format!("bulkhead-environment-{role}");
        must_get(&cluster_roles, &name, &format!("ClusterRole {name}")).await;
    }
    let namespace_role = "bulkhead-operator-namespace";
    must_get(
        &cluster_roles,
        namespace_role,
        "the operator's in-namespace ClusterRole",
    )
    .await;
    must_get(&roles, "bulkhead-credentials", "credentials Role").await;
    for policy in ["bulkhead-environment-namespaces", "bulkhead-operator-scope"] {
        cp.kubectl_ok(&["get", "validatingadmissionpolicy", policy]);
        cp.kubectl_ok(&["get", "validatingadmissionpolicybinding", policy]);
    }
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/organizations.bulkhead.dev",
        "crd/environments.bulkhead.dev",
        "crd/databaseclusters.bulkhead.dev",
        "--timeout=60s",
    ]);
}

fn ready_and_synced(conditions: &[Condition]) -> bool {
    ["Ready", "Synced"]
        .iter()
        .all(|t| condition(conditions, t).is_some_and(|c| c.status == "True"))
}

/// Waits until `name` is Ready and Synced, then checks that none of its
/// conditions speaks of a forbidden call (`what` names it in a failure).
async fn ready_synced_and_allowed<K>(api: &Api<K>, name: &str, timeout: Duration, what: &str)
where
    K: Conditions + Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let obj = wait_for(api, name, timeout, "Ready and Synced", |o| {
        ready_and_synced(o.conditions())
    })
    .await;
    no_forbidden_reason(what, obj.conditions());
}

fn no_forbidden_reason(what: &str, conditions: &[Condition]) {
    for c in conditions {
        assert!(
            !c.reason.contains("Forbidden") && !c.message.to_lowercase().contains("forbidden"),
            "{what}: condition {} says {}: {}",
            c.type_,
            c.reason,
            c.message
        );
    }
}

fn example(set: &str, file: &str) -> String {
    repo()
        .join("examples")
        .join(set)
        .join(file)
        .to_string_lossy()
        .into_owned()
}

async fn can_i(cp: &ControlPlane, args: &[&str]) -> bool {
    let sa = format!("--as=system:serviceaccount:{NAMESPACE}:{RELEASE}");
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.push(&sa);
    let out = cp.kubectl(&all);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn chart_rbac_is_enough_for_the_examples_and_no_more() {
    let cp = installed();
    let admin = cp.client().await;

    // The chart's ServiceAccount, exactly as the Deployment's pod gets it.
    let token = cp.kubectl_ok(&[
        "create",
        "token",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--duration",
        "2h",
    ]);
    let kubeconfig = cp.token_kubeconfig(&token, "bulkhead-sa");
    let mut operator = cp.start_leader_operator(&kubeconfig, NAMESPACE, "rbac-check", "20", &[]);

    for set in ["production", "staging"] {
        for file in [
            "organization.yaml",
            "environment.yaml",
            "databasecluster.yaml",
        ] {
            cp.kubectl_ok(&["apply", "-f", &example(set, file)]);
        }
    }
    // An Environment whose namespace bulkhead creates (and later deletes).
    let owned = format!("owned-{}", unique());
    let applied = cp.apply_stdin(
        &format!(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {owned}}}\nspec:\n  organizationRef: {{name: acme-staging}}\n  tier: development\n"
        ),
        &[],
    );
    assert!(applied.status.success(), "{}", text(&applied));
    let environments = ["production", "staging", owned.as_str()];
    let orgs: Api<Organization> = Api::all(admin.clone());
    let envs: Api<Environment> = Api::all(admin.clone());
    for org in ["acme-production", "acme-staging"] {
        ready_synced_and_allowed(&orgs, org, WAIT, org).await;
    }
    for env in environments {
        ready_synced_and_allowed(&envs, env, WAIT, env).await;
    }
    // CloudNativePG runs the in-cluster clusters; under kwok it never hears
    // from a PostgreSQL, so its healthy status is written in its place.
    for (ns, cluster) in [("production", "my-app-db"), ("staging", "my-app-db-stage")] {
        cnpg_cluster_healthy(&admin, ns, cluster, WAIT).await;
    }
    for ns in ["production", "staging"] {
        let dbcs: Api<DatabaseCluster> = Api::namespaced(admin.clone(), ns);
        ready_synced_and_allowed(&dbcs, "my-app-db", WAIT * 2, ns).await;
    }

    // Events were recorded under the ServiceAccount.
    assert!(
        all_events(&admin)
            .await
            .iter()
            .any(|e| e.reporting_controller.as_deref() == Some("bulkhead")),
        "no Event from bulkhead"
    );

    // Deleting runs the cleanup paths: finalizers, orphaning and deletion
    // of children, unlabelling adopted namespaces.
    for ns in ["production", "staging"] {
        let dbcs: Api<DatabaseCluster> = Api::namespaced(admin.clone(), ns);
        delete_and_wait(&dbcs, "my-app-db", WAIT).await;
    }
    for env in environments {
        delete_and_wait(&envs, env, WAIT).await;
    }
    // The namespace bulkhead made goes; the adopted ones stay.
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    wait_gone(&namespaces, &owned, WAIT).await;
    for adopted in ["production", "staging"] {
        assert!(
            exists(&namespaces, adopted).await,
            "adopted namespace {adopted} was deleted"
        );
    }
    for org in ["acme-production", "acme-staging"] {
        delete_and_wait(&orgs, org, WAIT).await;
    }

    let status = operator.stop().expect("operator exits after SIGTERM");
    let log = operator.log();
    assert!(status.success(), "operator exited with {status}:\n{log}");
    assert!(
        log.contains("released the leader lease"),
        "the lease was not released:\n{log}"
    );
    let lower = log.to_lowercase();
    assert!(
        // "code: 403" as kube-rs prints an API error; a bare "403" also
        // occurs inside trace ids.
        !lower.contains("forbidden") && !log.contains("code: 403"),
        "the operator hit a permission error under the chart's RBAC:\n{log}"
    );
    assert!(
        !log.contains("could not apply the bulkhead-environment-*"),
        "the operator could not apply the environment roles:\n{log}"
    );

    // No more than needed: what bulkhead never does stays denied.
    for denied in [
        vec!["create", "pods", "-A"],
        vec!["create", "deployments.apps", "-A"],
        vec!["delete", "organizations.bulkhead.dev"],
        vec!["create", "environments.bulkhead.dev"],
        vec!["update", "databaseclusters.bulkhead.dev", "-A"],
        vec!["create", "customresourcedefinitions.apiextensions.k8s.io"],
        vec![
            "get",
            "customresourcedefinitions.apiextensions.k8s.io/other.example.com",
        ],
        vec![
            "bind",
            "clusterroles.rbac.authorization.k8s.io/cluster-admin",
        ],
        vec![
            "escalate",
            "clusterroles.rbac.authorization.k8s.io/cluster-admin",
        ],
        vec!["update", "secrets", "-A"],
        vec!["get", "secrets", "-n", "kube-system"],
        vec!["list", "secrets", "-A"],
        vec!["create", "secrets", "-n", "default"],
        vec!["create", "configmaps", "-n", "kube-system"],
        vec![
            "escalate",
            "clusterroles.rbac.authorization.k8s.io/bulkhead-environment-admin",
        ],
        vec!["create", "pods/exec", "-A"],
        vec!["create", "serviceaccounts/token", "-A"],
        vec!["impersonate", "users"],
        vec!["create", "leases.coordination.k8s.io", "-n", "default"],
        vec!["patch", "leases.coordination.k8s.io/other", "-n", NAMESPACE],
    ] {
        assert!(
            !can_i(cp, &denied).await,
            "the chart's ServiceAccount may {}",
            denied.join(" ")
        );
    }
    for allowed in [
        vec![
            "bind",
            "clusterroles.rbac.authorization.k8s.io/bulkhead-environment-admin",
        ],
        vec![
            "patch",
            "leases.coordination.k8s.io/bulkhead-leader",
            "-n",
            NAMESPACE,
        ],
        vec![
            "patch",
            "organizations.bulkhead.dev",
            "--subresource=status",
        ],
        // Credentials are read from the release namespace only, by name.
        vec!["get", "secrets/postgres-admin", "-n", NAMESPACE],
    ] {
        assert!(
            can_i(cp, &allowed).await,
            "the chart's ServiceAccount may not {}",
            allowed.join(" ")
        );
    }
}

/// Every leaf of a values tree as a dotted path: maps with keys are walked
/// into, anything else (scalars, lists, empty maps) is one value.
fn leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, v) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(v, &path, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

fn values_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).expect("values parse")
}

/// The value at a documented (dotted) path; values.yaml's own keys have no
/// dots, though the maps they hold may.
fn at<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(tree, |v, key| v.get(key))
}

fn everything() -> PathBuf {
    repo().join("tests/fixtures/chart-values-everything.yaml")
}

/// Values that only show in the render once another is set (a disabled
/// object has no interval; a PDB needs replicas > 1; a digest hides the
/// tag; an existing ServiceAccount must be named).
fn prerequisites(key: &str) -> &'static [&'static str] {
    match key {
        k if k.ends_with(".enabled") => &[],
        k if k.starts_with("serviceMonitor.") => &["serviceMonitor.enabled=true"],
        k if k.starts_with("networkPolicy.") => &["networkPolicy.enabled=true"],
        k if k.starts_with("grafanaDashboard.") => &["grafanaDashboard.enabled=true"],
        "podDisruptionBudget.minAvailable" => &["replicas=2"],
        "serviceAccount.create" => &["serviceAccount.name=platform-bulkhead"],
        _ => &[],
    }
}

#[test]
fn every_documented_value_is_accepted_linted_and_changes_the_render() {
    let mut documented = Vec::new();
    leaves(
        &values_file(&chart().join("values.yaml")),
        "",
        &mut documented,
    );
    let fixture = values_file(&everything());
    // Each documented value is set, and nothing else is.
    let set: Vec<(String, Value)> = documented
        .iter()
        .map(|key| {
            let value = at(&fixture, key).unwrap_or_else(|| {
                panic!("tests/fixtures/chart-values-everything.yaml does not set {key}")
            });
            (key.clone(), value.clone())
        })
        .collect();
    let mut in_fixture = Vec::new();
    leaves(&fixture, "", &mut in_fixture);
    for key in in_fixture {
        assert!(
            documented
                .iter()
                .any(|d| key == *d || key.starts_with(&format!("{d}."))),
            "chart-values-everything.yaml sets {key}, which values.yaml does not document"
        );
    }

    // All of them at once: schema, lint and render.
    let file = everything();
    let file = file.to_str().expect("utf-8 path");
    let chart = chart();
    let chart_dir = chart.to_str().expect("utf-8 path");
    let out = helm(None, &["lint", "--strict", chart_dir, "--values", file]);
    assert!(
        out.status.success() && !text(&out).contains("[WARNING]"),
        "helm lint --strict --values everything:\n{}",
        text(&out)
    );
    let docs = documents(&template(&["--values", file]));
    let deployment = find(&docs, "Deployment", "bulkhead-ops").expect("fullnameOverride names it");
    let c = container(deployment);
    assert_eq!(
        c["image"],
        "registry.example/platform/bulkhead@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "platform-bulkhead"
    );
    assert!(
        !kinds(&docs).contains(&"ClusterRole".to_string()),
        "rbac.create=false and environmentRoles.create=false leave out ClusterRoles"
    );

    // Each value alone, on top of the defaults, changes what is rendered:
    // no value is documented but ignored.
    let default = template(&[]);
    for (key, value) in &set {
        let mut args = vec![
            "--set-json".to_string(),
            format!("{key}={}", serde_json::to_string(value).expect("json")),
        ];
        for p in prerequisites(key) {
            args.extend(["--set".to_string(), p.to_string()]);
        }
        let base = if prerequisites(key).is_empty() {
            default.clone()
        } else {
            let pre: Vec<&str> = prerequisites(key)
                .iter()
                .flat_map(|p| ["--set", p])
                .collect();
            template(&pre)
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_ne!(
            template(&args),
            base,
            "setting {key} to {value} changes nothing in the render"
        );
    }
}

#[test]
fn helm_package_makes_an_installable_chart_archive() {
    let dir = std::env::temp_dir().join(format!("bulkhead-chart-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let chart = chart();
    let out = helm(
        None,
        &[
            "package",
            chart.to_str().expect("utf-8 path"),
            "--destination",
            dir.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.status.success(), "helm package:\n{}", text(&out));
    let archive = dir.join(format!("bulkhead-{}.tgz", env!("CARGO_PKG_VERSION")));
    assert!(
        text(&out).contains(&archive.display().to_string()),
        "helm package says where the archive is:\n{}",
        text(&out)
    );

    // What a platform team downloads: the chart with its schema and CRDs,
    // nothing else.
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .expect("tar");
    assert!(listing.status.success(), "{listing:?}");
    let mut files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    files.sort();
    for want in [
        "bulkhead/Chart.yaml",
        "bulkhead/values.yaml",
        "bulkhead/values.schema.json",
        "bulkhead/README.md",
        "bulkhead/crds/organization.yaml",
        "bulkhead/crds/environment.yaml",
        "bulkhead/crds/databasecluster.yaml",
        "bulkhead/templates/deployment.yaml",
        "bulkhead/templates/NOTES.txt",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} not in {files:?}");
    }
    assert!(
        files.iter().all(|f| f.starts_with("bulkhead/")),
        "{files:?}"
    );

    // The archive lints and renders exactly as the directory does.
    let archive = archive.to_str().expect("utf-8 path");
    let out = helm(None, &["lint", "--strict", archive]);
    assert!(
        out.status.success() && text(&out).contains("0 chart(s) failed"),
        "{}",
        text(&out)
    );
    let out = helm(
        None,
        &["template", RELEASE, archive, "--namespace", NAMESPACE],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), template(&[]));
    let out = helm(None, &["show", "chart", archive]);
    assert!(
        text(&out).contains(&format!("appVersion: {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn default_image_is_the_one_hack_image_sh_builds() {
    let out = Command::new(repo().join("hack/image.sh"))
        .arg("--print-ref")
        .stdin(Stdio::null())
        .output()
        .expect("run hack/image.sh --print-ref");
    assert!(out.status.success(), "{}", text(&out));
    let built = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let docs = documents(&template(&[]));
    let deployment = find(&docs, "Deployment", RELEASE).expect("Deployment");
    assert_eq!(
        container(deployment)["image"],
        built.as_str(),
        "a default install must run the image hack/image.sh tags"
    );
}

#[test]
fn grafana_dashboard_is_an_opt_in_configmap_for_the_sidecar() {
    let default = documents(&template(&[]));
    assert!(
        find(&default, "ConfigMap", "bulkhead-dashboard").is_none(),
        "the dashboard is off by default"
    );
    let docs = documents(&template(&[
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "grafanaDashboard.namespace=monitoring",
        "--set",
        "grafanaDashboard.annotations.grafana_folder=Platform",
    ]));
    let cm = find(&docs, "ConfigMap", "bulkhead-dashboard").expect("dashboard ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"], "1",
        "the Grafana chart's sidecar default label"
    );
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Platform");
    let shipped = std::fs::read_to_string(chart().join("dashboards/bulkhead.json"))
        .expect("read the dashboard");
    let rendered = cm["data"]["bulkhead.json"]
        .as_str()
        .expect("bulkhead.json key");
    assert_eq!(
        rendered.trim_end(),
        shipped.trim_end(),
        "the file, unchanged"
    );
    let dashboard: Value = serde_json::from_str(rendered).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "bulkhead-operator");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in ["errors", "duration", "condition", "Leader"] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want}: {titles:?}"
        );
    }
}
