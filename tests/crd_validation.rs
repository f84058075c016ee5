//! What a user sees from the apiserver alone, before any operator runs: the
//! CRDs in `crds/` install and are served (names, short names, category,
//! printer columns, `kubectl explain` docs), every example applies, and every
//! malformed manifest in `tests/fixtures/invalid/` is rejected with a message
//! that says what is wrong. No controller runs in this binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::controlplane::{ControlPlane, repo, unique};

/// Namespace the namespaced fixtures in `tests/fixtures/invalid/` use.
const INVALID_NS: &str = "bulkhead-invalid";

const CRDS: [&str; 3] = [
    "organizations.bulkhead.dev",
    "environments.bulkhead.dev",
    "databaseclusters.bulkhead.dev",
];

static INVALID_NS_CREATED: OnceLock<()> = OnceLock::new();

/// The shared apiserver with `crds/` installed (`kubectl apply -f crds/`).
fn cp() -> &'static ControlPlane {
    let cp = ControlPlane::apiserver();
    cp.install_crds();
    cp
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Creates a namespace (idempotent).
fn namespace(cp: &ControlPlane, name: &str) {
    let out = cp.apply_stdin(
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"),
        &["--server-side"],
    );
    assert!(
        out.status.success(),
        "create namespace {name}: {}",
        stderr(&out)
    );
}

fn invalid_namespace(cp: &ControlPlane) {
    INVALID_NS_CREATED.get_or_init(|| namespace(cp, INVALID_NS));
}

/// `kubectl apply --server-side -f -` that must succeed.
fn apply_ok(cp: &ControlPlane, manifest: &str) {
    let out = cp.apply_stdin(manifest, &["--server-side"]);
    assert!(
        out.status.success(),
        "apply failed: {}\n--- manifest ---\n{manifest}",
        stderr(&out)
    );
}

/// `kubectl apply --server-side -f -` that the apiserver must reject with a
/// message containing `expect`.
fn apply_rejected(cp: &ControlPlane, manifest: &str, expect: &str) {
    let out = cp.apply_stdin(manifest, &["--server-side"]);
    assert!(
        !out.status.success(),
        "apply was accepted, expected a rejection containing {expect:?}\n--- manifest ---\n{manifest}"
    );
    let err = stderr(&out);
    assert!(
        err.contains(expect),
        "rejection does not contain {expect:?}:\n{err}\n--- manifest ---\n{manifest}"
    );
}

/// Runs `kubectl` until its stdout contains every one of `wanted` (the
/// apiserver publishes a new CRD's OpenAPI a moment after it is
/// Established), or panics with the last output.
fn kubectl_eventually_contains(cp: &ControlPlane, args: &[&str], wanted: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cp.kubectl(args);
        let text = stdout(&out);
        let missing: Vec<&&str> = wanted.iter().filter(|w| !text.contains(**w)).collect();
        if out.status.success() && missing.is_empty() {
            return text;
        }
        if Instant::now() > deadline {
            panic!(
                "kubectl {} never showed {missing:?}; last output:\n{text}{}",
                args.join(" "),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The column headers of the first line of `kubectl get` output.
fn header(table: &str) -> String {
    table.lines().next().unwrap_or_default().to_string()
}

#[test]
fn crds_are_established_with_names_accepted() {
    let cp = cp();
    // A plain client-side `kubectl apply -f crds/` works too (on top of
    // the server-side install, so it must be accepted as an update).
    let applied = cp.kubectl_ok(&["apply", "-f", &repo().join("crds").to_string_lossy()]);
    for crd in CRDS {
        assert!(
            applied.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{crd}"
            )),
            "kubectl apply -f crds/ did not apply {crd}:\n{applied}"
        );
    }
    for crd in CRDS {
        let json = cp.kubectl_ok(&["get", "crd", crd, "-o", "json"]);
        let crd_obj: serde_json::Value = serde_json::from_str(&json).expect("crd json");
        let conditions = crd_obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            let status = conditions
                .iter()
                .find(|c| c["type"] == wanted)
                .map(|c| c["status"].as_str().unwrap_or_default().to_string());
            assert_eq!(
                status.as_deref(),
                Some("True"),
                "{crd}: condition {wanted} is {status:?}; conditions: {conditions:#?}"
            );
        }
    }

    // Discovery shows short names and the bulkhead category.
    let resources = cp.kubectl_ok(&["api-resources", "--api-group=bulkhead.dev", "-o", "wide"]);
    for (plural, short, namespaced) in [
        ("organizations", "org", "false"),
        ("environments", "env", "false"),
        ("databaseclusters", "dbc", "true"),
    ] {
        let line = resources
            .lines()
            .find(|l| l.split_whitespace().next() == Some(plural))
            .unwrap_or_else(|| panic!("{plural} missing from api-resources:\n{resources}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(
            fields.contains(&short) && fields.contains(&namespaced) && fields.contains(&"bulkhead"),
            "{plural}: expected short name {short}, namespaced={namespaced}, category bulkhead in {line:?}"
        );
    }
}

#[test]
fn kubectl_explain_shows_field_docs() {
    let cp = cp();
    kubectl_eventually_contains(
        cp,
        &["explain", "organization.spec.members"],
        &[
            "Members of the organization, by email",
            "email\t<string> -required-",
            // Member.email and Member.role doc comments.
            "Email address the invitation goes to; also the Kubernetes user name.",
            "admin, member or viewer.",
            "enum: admin, member, viewer",
            "expiresAt",
        ],
    );
    kubectl_eventually_contains(
        cp,
        &["explain", "databasecluster.spec.size"],
        &[
            "Size: a preset, or a custom shape.",
            "custom\t<Object>",
            "A custom shape.",
            "enum: development, production",
        ],
    );
    kubectl_eventually_contains(
        cp,
        &["explain", "environment.spec.tier"],
        &["production, staging, development, testing or preview."],
    );
}

#[test]
fn kubectl_get_shows_printer_columns_short_names_and_category() {
    let cp = cp();
    let name = format!("cols-{}", unique());
    let ns = format!("bulkhead-cols-{}", unique());
    namespace(cp, &ns);
    apply_ok(
        cp,
        &format!(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: Organization\nmetadata:\n  name: {name}\nspec: {{}}\n---\n\
             apiVersion: bulkhead.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: {name}\nspec:\n  organizationRef:\n    name: {name}\n  tier: staging\n  namespaces: [{ns}]\n---\n\
             apiVersion: bulkhead.dev/v1alpha1\nkind: DatabaseCluster\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec: {{}}\n"
        ),
    );

    let orgs = cp.kubectl_ok(&["get", "org"]);
    let h = header(&orgs);
    for col in ["NAME", "PROVIDER", "SLUG", "READY", "SYNCED", "AGE"] {
        assert!(
            h.contains(col),
            "`kubectl get org` header lacks {col}:\n{orgs}"
        );
    }
    let row = orgs
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from `kubectl get org`:\n{orgs}"));
    assert!(
        row.contains("kubernetes"),
        "PROVIDER column should show the defaulted provider type: {row:?}"
    );

    let envs = cp.kubectl_ok(&["get", "env", &name, "-o", "wide"]);
    let h = header(&envs);
    for col in ["TIER", "ORGANIZATION", "READY", "SYNCED", "ISOLATED", "AGE"] {
        assert!(
            h.contains(col),
            "`kubectl get env -o wide` header lacks {col}:\n{envs}"
        );
    }
    assert!(envs.contains("staging"), "tier column: {envs}");

    let dbcs = cp.kubectl_ok(&["get", "dbc", "-A"]);
    let h = header(&dbcs);
    for col in [
        "NAMESPACE",
        "EXTERNAL NAME",
        "PROVIDER",
        "TIER",
        "READY",
        "SYNCED",
        "AGE",
    ] {
        assert!(
            h.contains(col),
            "`kubectl get dbc -A` header lacks {col}:\n{dbcs}"
        );
    }
    assert!(
        dbcs.contains(&name),
        "{name} missing from `kubectl get dbc -A`:\n{dbcs}"
    );

    // The category lists every kind at once.
    let all = cp.kubectl_ok(&["get", "bulkhead", "-A"]);
    for wanted in [
        format!("organization.bulkhead.dev/{name}"),
        format!("environment.bulkhead.dev/{name}"),
        format!("databasecluster.bulkhead.dev/{name}"),
    ] {
        assert!(
            all.contains(&wanted),
            "`kubectl get bulkhead -A` lacks {wanted}:\n{all}"
        );
    }
}

/// Every YAML file under `examples/`, files holding a Namespace first (so
/// the namespaces exist before the DatabaseClusters that live in them).
fn example_files() -> Vec<PathBuf> {
    let mut files = support::example_files();
    let has_namespace = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == "kind: Namespace")
    };
    files.sort_by_key(|p| !has_namespace(p));
    files
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn examples_apply_with_server_dry_run_and_for_real() {
    let cp = cp();
    let files = example_files();
    assert!(
        files.len() >= 6,
        "expected the production and staging examples, found {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        let path = file.to_string_lossy();
        for args in [
            vec!["apply", "--dry-run=server", "-f", &path],
            vec!["apply", "-f", &path],
        ] {
            let out = cp.kubectl(&args);
            if !out.status.success() {
                failures.push(format!(
                    "kubectl {}: {}",
                    args.join(" ").replace(&*path, &rel(file)),
                    stderr(&out).trim()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "examples rejected by the apiserver:\n{}",
        failures.join("\n")
    );

    // Once the namespaces exist the documented one-liner works as a whole and is idempotent.
    let production = repo().join("examples/production");
    let staging = repo().join("examples/staging");
    cp.kubectl_ok(&[
        "apply",
        "-f",
        &production.to_string_lossy(),
        "-f",
        &staging.to_string_lossy(),
    ]);
    cp.kubectl_ok(&["get", "org", "acme-production", "acme-staging"]);
    cp.kubectl_ok(&["get", "env", "production", "staging"]);
    cp.kubectl_ok(&["get", "dbc", "my-app-db", "-n", "production"]);
    cp.kubectl_ok(&["get", "dbc", "my-app-db", "-n", "staging"]);
}

/// One malformed manifest and the message the apiserver must answer with.
struct Fixture {
    path: PathBuf,
    expect: Option<String>,
}

fn invalid_fixtures() -> Vec<Fixture> {
    let dir = repo().join("tests/fixtures/invalid");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/invalid exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read fixture");
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect:"))
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty());
            Fixture { path, expect }
        })
        .collect()
}

/// Applies one fixture; `Some(reason)` when it was not rejected as expected.
fn check_fixture(cp: &ControlPlane, fixture: &Fixture) -> Option<String> {
    let name = rel(&fixture.path);
    let Some(expect) = &fixture.expect else {
        return Some(format!("{name}: first line must be `# expect: <message>`"));
    };
    let path = fixture.path.to_string_lossy();
    let out = cp.kubectl(&["apply", "--server-side", "-f", &path]);
    if out.status.success() {
        // Leave nothing behind for the next run of this test.
        cp.kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f", &path]);
        return Some(format!(
            "{name}: accepted ({}), expected a rejection containing {expect:?}",
            stdout(&out).trim()
        ));
    }
    let err = stderr(&out);
    if !err.contains(expect.as_str()) {
        return Some(format!(
            "{name}: rejected, but the message lacks {expect:?}; apiserver said:\n    {}",
            err.trim().replace('\n', "\n    ")
        ));
    }
    None
}

#[test]
fn invalid_manifests_are_rejected_with_clear_messages() {
    let cp = cp();
    invalid_namespace(cp);
    let fixtures = invalid_fixtures();
    assert!(
        fixtures.len() >= 24,
        "expected at least 24 fixtures in tests/fixtures/invalid, found {}",
        fixtures.len()
    );
    // kubectl start-up dominates; a few at a time keeps this quick on small machines.
    let chunk = fixtures.len().div_ceil(4);
    let mut failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = fixtures
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|f| check_fixture(cp, f))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("fixture worker"))
            .collect()
    });
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} invalid fixtures were not rejected as expected:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

/// The positive controls: the smallest valid object of each kind, and one
/// that sits on every boundary the fixtures cross, are accepted — so the
/// fixtures fail for the reason they name and not for a missing field.
#[test]
fn minimal_and_boundary_valid_objects_are_accepted() {
    let cp = cp();
    invalid_namespace(cp);
    let u = unique();
    // Minimal: only what the schema requires (`spec` itself is required, even
    // where every field in it has a default).
    apply_ok(
        cp,
        &format!(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: Organization\nmetadata:\n  name: valid-min-{u}\nspec: {{}}\n"
        ),
    );
    apply_ok(
        cp,
        &format!(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: valid-min-{u}\nspec:\n  organizationRef:\n    name: valid-min-{u}\n  tier: staging\n"
        ),
    );
    apply_ok(
        cp,
        &format!(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: DatabaseCluster\nmetadata:\n  name: valid-min-{u}\n  namespace: {INVALID_NS}\nspec: {{}}\n"
        ),
    );

    // Boundaries: 63-character slug, 1h token expiry, deploy token with app,
    // fly with credentials, ServiceAccount with namespace, IPv6 CIDR, empty
    // production suffix, 40-character cluster name, smallest and largest
    // custom shape, Sanitized copy with masks, version with a minor.
    let slug = format!("a{}", "-b".repeat(31));
    assert_eq!(slug.len(), 63);
    apply_ok(
        cp,
        &manifest(
            "Organization",
            &format!("valid-max-{u}"),
            None,
            &format!(
                r#"  provider:
    type: fly
    credentialsSecretRef: {{name: fly-api, key: token}}
  slug: {slug}
  displayName: Valid (boundaries)
  members:
    - {{email: alice@acme.example, role: admin}}
    - {{email: bob@acme.example, role: member, expiresAt: "2030-01-01T00:00:00Z"}}
    - {{email: carol@acme.example, role: viewer}}
  billing: {{plan: enterprise, billingEmail: billing@acme.example}}
  tokens:
    - {{name: ci, scope: org, expiry: 1h, secretRef: {{namespace: {INVALID_NS}, name: ci-token}}}}
    - {{name: deploy-web, scope: deploy, app: web, expiry: 1h30m, secretRef: {{namespace: {INVALID_NS}, name: web-token}}}}
  deletionPolicy: Delete
  managementPolicy: ObserveOnly
"#
            ),
        ),
    );
    apply_ok(
        cp,
        &manifest(
            "Environment",
            &format!("valid-max-{u}"),
            None,
            &format!(
                r#"  organizationRef: {{name: valid-max-{u}}}
  tier: production
  namespaces: [valid-max-{u}, valid-max-{u}-2]
  access:
    - role: admin
      subjects:
        - {{kind: User, name: alice@acme.example}}
        - {{kind: Group, name: sre}}
        - {{kind: ServiceAccount, name: deployer, namespace: ci}}
  network:
    allowedCIDRs: [10.8.0.0/16, "2001:db8::/32"]
  naming: {{suffix: ""}}
  isolation: {{mode: Warn}}
  databaseProvider: {{type: postgres, credentialsSecretRef: {{name: pg-admin, key: dsn}}}}
"#
            ),
        ),
    );
    let long_name = format!("v{u}-{}", "x".repeat(40));
    let long_name = &long_name[..40];
    for (name, size) in [
        (
            long_name.to_string(),
            "custom: {cpus: 1, memoryMiB: 256, storageGiB: 1, replicas: 1}",
        ),
        (
            format!("valid-max-{u}"),
            "custom: {cpus: 64, memoryMiB: 262144, storageGiB: 16384, replicas: 9}",
        ),
    ] {
        apply_ok(
            cp,
            &manifest(
                "DatabaseCluster",
                &name,
                Some(INVALID_NS),
                &format!(
                    r#"  environmentRef: {{name: valid-max-{u}}}
  engine: postgres
  version: "16.4"
  size:
    {size}
  databases:
    - {{name: app, owner: app_owner}}
  users:
    - {{name: app_owner, databases: [app], privileges: owner}}
    - {{name: app_ro, databases: [app], privileges: readOnly, connectionLimit: -1}}
  passwordRotation: {{interval: 1m}}
  source:
    clusterRef: {{name: my-app-db, namespace: production}}
    mode: Sanitized
    sanitize:
      excludeTables: [audit_log, billing.invoices]
      columns: {{users.email: hash, users.phone: "null", users.name: redact}}
  copyPolicy:
    allowedEnvironments: [staging, development]
    sanitize:
      excludeTables: [audit_log]
      columns: {{users.email: hash}}
    safeColumns: [users.country, billing.invoices.city]
    allowUnmasked: false
  deletionPolicy: Orphan
"#
                ),
            ),
        );
    }
}

/// A bulkhead.dev/v1alpha1 object of `kind` named `name` (in `namespace`,
/// when namespaced) whose spec is the YAML lines `spec`.
fn manifest(kind: &str, name: &str, namespace: Option<&str>, spec: &str) -> String {
    let namespace = namespace.map_or(String::new(), |ns| format!("  namespace: {ns}\n"));
    format!(
        "apiVersion: bulkhead.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n{namespace}spec:\n{spec}"
    )
}

#[test]
fn organization_slug_and_provider_type_are_immutable() {
    let cp = cp();
    let name = format!("imm-org-{}", unique());
    let org = |spec: &str| manifest("Organization", &name, None, spec);
    apply_ok(
        cp,
        &org(&format!("  slug: {name}\n  displayName: Before\n")),
    );
    // Other fields stay editable.
    apply_ok(cp, &org(&format!("  slug: {name}\n  displayName: After\n")));

    apply_rejected(
        cp,
        &org("  slug: renamed\n  displayName: After\n"),
        "spec.slug: Invalid value: spec.slug is immutable once set",
    );
    apply_rejected(
        cp,
        &org("  displayName: After\n"),
        "spec.slug is immutable once set",
    );
    apply_rejected(
        cp,
        &org(&format!(
            "  slug: {name}\n  provider:\n    type: postgres\n    credentialsSecretRef: {{name: pg, key: uri}}\n"
        )),
        "spec.provider.type: Invalid value: spec.provider.type is immutable: create a new Organization to move providers",
    );
    let slug = cp.kubectl_ok(&["get", "org", &name, "-o", "jsonpath={.spec.slug}"]);
    assert_eq!(slug, name, "the stored slug must be unchanged");
}

#[test]
fn environment_tier_is_immutable() {
    let cp = cp();
    let name = format!("imm-env-{}", unique());
    let env = |tier: &str| {
        let spec = format!("  organizationRef:\n    name: acme\n  tier: {tier}\n");
        manifest("Environment", &name, None, &spec)
    };
    apply_ok(cp, &env("staging"));
    apply_rejected(
        cp,
        &env("production"),
        "spec.tier: Invalid value: spec.tier is immutable: create a new Environment for another tier",
    );
    let tier = cp.kubectl_ok(&["get", "env", &name, "-o", "jsonpath={.spec.tier}"]);
    assert_eq!(tier, "staging");
}

#[test]
fn database_cluster_engine_and_environment_ref_are_immutable() {
    let cp = cp();
    invalid_namespace(cp);
    let name = format!("imm-dbc-{}", unique());
    let dbc = |spec: &str| {
        let spec = format!("  engine: postgres\n{spec}");
        manifest("DatabaseCluster", &name, Some(INVALID_NS), &spec)
    };
    apply_ok(cp, &dbc("  environmentRef:\n    name: staging\n"));
    // Other fields stay editable.
    apply_ok(
        cp,
        &dbc("  environmentRef:\n    name: staging\n  version: \"17\"\n"),
    );

    apply_rejected(
        cp,
        &dbc("  environmentRef:\n    name: production\n  version: \"17\"\n"),
        "spec.environmentRef: Invalid value: spec.environmentRef is immutable once set",
    );
    apply_rejected(
        cp,
        &dbc("  version: \"17\"\n"),
        "spec.environmentRef is immutable once set",
    );
    // postgres is the only engine, so another one never gets past the enum.
    apply_rejected(
        cp,
        &dbc("  environmentRef:\n    name: staging\n  version: \"17\"\n")
            .replace("engine: postgres", "engine: mysql"),
        "spec.engine: Unsupported value: \"mysql\": supported values: \"postgres\"",
    );
    let env = cp.kubectl_ok(&[
        "get",
        "dbc",
        &name,
        "-n",
        INVALID_NS,
        "-o",
        "jsonpath={.spec.environmentRef.name}",
    ]);
    assert_eq!(env, "staging");
}
