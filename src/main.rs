use clap::{Parser, Subcommand};

/// bulkhead keeps production, staging and development apart: Organizations,
/// Environments and DatabaseClusters as Kubernetes custom resources.
#[derive(Parser, Debug)]
#[command(name = "bulkhead", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator against the cluster in KUBECONFIG or the in-cluster config.
    Run(Box<bulkhead::run::RunArgs>),
    /// Print every CRD as multi-document YAML, or write one file per kind
    /// into a directory (how `crds/` is generated).
    Crd {
        /// Write `<kind>.yaml` files into this directory instead of
        /// printing (repeat for several, e.g. crds/ and charts/bulkhead/crds/).
        #[arg(long, value_name = "DIR")]
        output_dir: Vec<std::path::PathBuf>,
    },
    /// Print the version.
    Version,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd { output_dir } if output_dir.is_empty() => bulkhead::api::crds_yaml()
            .map(|y| print!("{y}"))
            .map_err(bulkhead::Error::from),
        Command::Crd { output_dir } => output_dir
            .iter()
            .try_for_each(|dir| bulkhead::api::write_crds(dir)),
        Command::Version => {
            println!("bulkhead {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(args) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(bulkhead::run::run(*args)),
            Err(e) => Err(bulkhead::Error::Io(e)),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
