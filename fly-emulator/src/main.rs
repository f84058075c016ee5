use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fly_emulator::Config;
use fly_emulator::control::RateLimitSettings;

/// Stateful emulator of Fly.io's GraphQL and Machines REST APIs.
#[derive(Parser, Debug)]
#[command(name = "fly-emulator", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the first stdout
    /// line says which).
    #[arg(long, default_value = "127.0.0.1:4280")]
    listen: SocketAddr,
    /// The bootstrap user's token, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "FLY_EMULATOR_TOKEN", hide_env_values = true)]
    token: String,
    /// Email of the bootstrap user.
    #[arg(long, default_value = "admin@emulator.invalid")]
    admin_email: String,
    /// Seed of every random choice (IDs, secrets, injected faults).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Multiplies Fly's published rate limits (rates and bursts).
    #[arg(long, default_value_t = 1.0)]
    rate_limit_scale: f64,
    /// Turns the Machines API rate limits off.
    #[arg(long)]
    no_rate_limits: bool,
    /// Milliseconds a Managed Postgres cluster stays `creating`.
    #[arg(long, default_value_t = 3000)]
    postgres_ready_after_ms: u64,
    /// Appends one JSON line per request (no credentials) to this file.
    #[arg(long, env = "FLY_EMULATOR_REQUEST_LOG")]
    request_log: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.token.trim().is_empty() {
        return Err("--token (or FLY_EMULATOR_TOKEN) must not be empty".into());
    }
    if !(args.rate_limit_scale.is_finite() && args.rate_limit_scale > 0.0) {
        return Err("--rate-limit-scale must be a positive number".into());
    }
    let config = Config {
        admin_token: args.token,
        admin_email: args.admin_email,
        seed: args.seed,
        rate_limits: RateLimitSettings {
            enabled: !args.no_rate_limits,
            scale: args.rate_limit_scale,
        },
        postgres_ready_after: Duration::from_millis(args.postgres_ready_after_ms),
        request_log: args.request_log,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let server = fly_emulator::serve(config, listener).await?;
    // Tests and scripts read the address from this first line.
    println!("listening on {}", server.url());
    tracing::info!(addr = %server.addr, "fly-emulator ready");
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
