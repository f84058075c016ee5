//! bulkhead: a Kubernetes operator that keeps production, staging and
//! development apart. See the README for the product and ARCHITECTURE notes in
//! each module for the why.

pub mod api;
pub mod controller;
pub mod metrics;
pub mod provider;
pub mod reasons;
pub mod reconcile;
pub mod run;
pub mod telemetry;

pub use api::{DatabaseCluster, Environment, Organization};

/// Errors of the operator's own plumbing (not of a reconcile).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("rendering YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error(
        "the bulkhead CRDs are not installed: {missing}. Install them with `kubectl apply -f crds/` (or `bulkhead crd | kubectl apply -f -`)"
    )]
    CrdsMissing { missing: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
