//! `bulkhead run`: connect to the cluster, check the CRDs, run the controllers.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use tracing::info;

use crate::telemetry::{self, LogFormat};
use crate::{Error, Result};

/// Flags of `bulkhead run`; each also reads an environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Log level directive (e.g. info, debug, bulkhead=debug,kube=warn).
    #[arg(long, env = "BULKHEAD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Names of the CRDs bulkhead needs.
pub fn required_crds() -> Vec<String> {
    crate::api::crds()
        .into_iter()
        .filter_map(|(_, crd)| crd.metadata.name)
        .collect()
}

/// Fails with the list of missing CRDs when any is not installed.
pub async fn check_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for name in required_crds() {
        if api.get_opt(&name).await?.is_none() {
            missing.push(name);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::CrdsMissing {
            missing: missing.join(", "),
        })
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    telemetry::init(args.log_format, &args.log_level);
    let client = Client::try_default()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    check_crds(&client).await?;
    info!("bulkhead CRDs installed");
    Ok(())
}
