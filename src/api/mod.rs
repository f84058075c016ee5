//! The bulkhead API: group `bulkhead.dev`, version `v1alpha1`.

pub mod common;
pub mod database_cluster;
pub mod environment;
pub mod organization;

pub use common::*;
pub use database_cluster::{DatabaseCluster, DatabaseClusterSpec, DatabaseClusterStatus};
pub use environment::{Environment, EnvironmentSpec, EnvironmentStatus, Tier};
pub use organization::{Organization, OrganizationSpec, OrganizationStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD bulkhead serves, with the file name it is committed under in `crds/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("organization.yaml", Organization::crd()),
        ("environment.yaml", Environment::crd()),
        ("databasecluster.yaml", DatabaseCluster::crd()),
    ]
}

/// Renders one CRD as the YAML committed under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(crd)
}

/// Every CRD as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for (_, crd) in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// Writes one YAML file per CRD into `dir` (the `crds/` layout).
pub fn write_crds(dir: &std::path::Path) -> crate::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, crd) in crds() {
        std::fs::write(dir.join(file), crd_yaml(&crd)?)?;
    }
    Ok(())
}
