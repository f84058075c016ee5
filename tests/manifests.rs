//! The committed manifests: `crds/` is exactly what `bulkhead crd` generates,
//! and every file in `examples/` parses into the Rust types.

mod support;

use std::path::{Path, PathBuf};

use bulkhead::api::{self, DatabaseCluster, Environment, Organization, Tier};
use serde::Deserialize;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crds_directory_matches_generated_crds() {
    let mut expected_files = Vec::new();
    for (file, crd) in api::crds() {
        let generated = api::crd_yaml(&crd).expect("render CRD");
        let path = repo().join("crds").join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} unreadable ({e}); run `cargo run -- crd --output-dir crds --output-dir charts/bulkhead/crds`",
                path.display()
            )
        });
        assert!(
            committed == generated,
            "{} differs from `bulkhead crd`; regenerate with `cargo run -- crd --output-dir crds --output-dir charts/bulkhead/crds` (never edit crds/ by hand)",
            path.display()
        );
        expected_files.push(file.to_string());
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(repo().join("crds"))
        .expect("crds/ exists")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    on_disk.sort();
    expected_files.sort();
    assert_eq!(
        on_disk, expected_files,
        "crds/ holds files `bulkhead crd` does not generate"
    );
}

#[test]
fn crd_stream_contains_every_kind_once() {
    let yaml = api::crds_yaml().expect("render");
    for kind in ["Organization", "Environment", "DatabaseCluster"] {
        assert_eq!(
            yaml.matches(&format!("kind: {kind}\n")).count(),
            1,
            "{kind}"
        );
    }
}

/// Every YAML document under examples/, with the file it came from.
fn example_documents() -> Vec<(PathBuf, serde_yaml_ng::Value)> {
    let files = support::example_files();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read example");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            docs.push((path.clone(), value));
        }
    }
    docs
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, value: &serde_yaml_ng::Value) -> T {
    serde_yaml_ng::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

#[test]
fn every_example_parses_into_its_type() {
    let docs = example_documents();
    let (mut orgs, mut envs, mut dbcs) = (Vec::new(), Vec::new(), Vec::new());
    for (path, doc) in &docs {
        match doc.get("kind").and_then(|k| k.as_str()) {
            Some("Organization") => orgs.push(parse::<Organization>(path, doc)),
            Some("Environment") => envs.push(parse::<Environment>(path, doc)),
            Some("DatabaseCluster") => dbcs.push(parse::<DatabaseCluster>(path, doc)),
            Some("Secret") | Some("Namespace") => {}
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
    let names = |v: Vec<Option<String>>| v.into_iter().flatten().collect::<Vec<_>>();
    let mut org_names = names(orgs.iter().map(|o| o.metadata.name.clone()).collect());
    org_names.sort();
    assert_eq!(
        org_names,
        ["acme-fly-staging", "acme-production", "acme-staging"]
    );
    let fly_org = orgs
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some("acme-fly-staging"))
        .expect("the Fly staging Organization");
    assert_eq!(fly_org.spec.provider.type_, api::ProviderType::Fly);
    assert!(
        fly_org.spec.provider.credentials_secret_ref.is_some(),
        "a Fly organization names its API token's Secret"
    );
    let fly_env = envs
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some("fly-staging"))
        .expect("the Fly staging Environment");
    assert_eq!(fly_env.spec.tier, Tier::Staging);

    let staging = envs
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some("staging"))
        .expect("a staging Environment");
    assert_eq!(staging.spec.tier, Tier::Staging);
    assert_eq!(
        staging.suffix(),
        "-stage",
        "staging names get the -stage suffix"
    );
    let production = envs
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some("production"))
        .expect("a production Environment");
    assert_eq!(production.suffix(), "");
    assert_eq!(production.namespaces(), ["production"]);

    let staging_db = dbcs
        .iter()
        .find(|d| d.metadata.namespace.as_deref() == Some("staging"))
        .expect("a DatabaseCluster in staging");
    assert_eq!(staging_db.metadata.name.as_deref(), Some("my-app-db"));
    assert_eq!(staging_db.resolved_size(false).replicas, 1);
    let production_db = dbcs
        .iter()
        .find(|d| d.metadata.namespace.as_deref() == Some("production"))
        .expect("a DatabaseCluster in production");
    assert_eq!(production_db.resolved_size(true).replicas, 3);
}

#[test]
fn defaults_follow_the_design() {
    let org: Organization = serde_yaml_ng::from_str(
        "apiVersion: bulkhead.dev/v1alpha1\nkind: Organization\nmetadata: {name: o}\nspec: {}\n",
    )
    .expect("minimal org parses");
    assert_eq!(org.spec.provider.type_, api::ProviderType::Kubernetes);
    assert_eq!(org.spec.deletion_policy, api::DeletionPolicy::Orphan);
    assert_eq!(org.spec.management_policy, api::ManagementPolicy::Full);
    assert_eq!(org.slug(), "o");

    let dbc: DatabaseCluster = serde_yaml_ng::from_str(
        "apiVersion: bulkhead.dev/v1alpha1\nkind: DatabaseCluster\nmetadata: {name: d, namespace: n}\nspec: {}\n",
    )
    .expect("minimal dbc parses");
    assert_eq!(dbc.spec.deletion_policy, api::DeletionPolicy::Delete);
    assert_eq!(dbc.spec.version, "16");
    assert_eq!(
        dbc.resolved_size(true).replicas,
        3,
        "production tier defaults to the HA preset"
    );
    assert_eq!(
        dbc.resolved_size(false).replicas,
        1,
        "other tiers default to one node"
    );
}
