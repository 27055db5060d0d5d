//! `market`: every server-side process of the marketplace, and `market up`, which runs a
//! whole marketplace locally.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use servers::http::{self, Limits};
use servers::payments::{PaymentsConfig, PaymentsService};
use servers::single::{self, SingleOptions};

#[derive(Parser)]
#[command(name = "market", version, about = "A replicated online marketplace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the marketplace locally and writes cluster.json with its endpoints.
    Up(UpArgs),
    /// Runs the financial transactions (SOAP) service alone.
    Payments(PaymentsArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// Everything in one process, both databases on single-node durable logs.
    #[arg(long)]
    single: bool,
    /// Where the databases keep their data.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// First port of the block the servers listen on (payments, +10 seller, +20 buyer).
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    /// Where to write the endpoints for the CLIs.
    #[arg(long, default_value = "cluster.json")]
    cluster_json: PathBuf,
    /// Share of payments the payment service approves.
    #[arg(long, default_value_t = 0.9)]
    approve_rate: f64,
    /// Seed for repeatable payment decisions.
    #[arg(long)]
    seed: Option<u64>,
    /// Idle seconds after which a session ends.
    #[arg(long, default_value_t = 300)]
    session_idle_secs: u64,
}

#[derive(clap::Args)]
struct PaymentsArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Share of payments approved, 0 to 1.
    #[arg(long, default_value_t = 0.9)]
    approve_rate: f64,
    /// Seed for a repeatable sequence of decisions.
    #[arg(long)]
    seed: Option<u64>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MARKET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

async fn up_single(args: UpArgs) -> Result<(), String> {
    let at = |offset: u16| SocketAddr::from(([127, 0, 0, 1], args.base_port + offset));
    let options = SingleOptions {
        data_dir: Some(args.data_dir.join("single")),
        seller_addr: at(10),
        buyer_addr: at(20),
        payments_addr: at(0),
        approve_rate: args.approve_rate,
        seed: args.seed,
        session_idle: Duration::from_secs(args.session_idle_secs),
        password: marketcore::password::PasswordParams::PRODUCTION,
        limits: Limits::default(),
        clock: None,
    };
    let running = single::start(options).await.map_err(|e| e.to_string())?;
    let file = serde_json::json!({
        "seller_servers": [format!("http://{}", running.seller_addr)],
        "buyer_servers": [format!("http://{}", running.buyer_addr)],
        "payments": format!("http://{}/soap", running.payments_addr),
        "processes": [{"name": "market-single", "pid": std::process::id(), "role": "single", "addr": running.seller_addr.to_string()}],
    });
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    std::fs::write(&args.cluster_json, text).map_err(|e| format!("{}: {e}", args.cluster_json.display()))?;
    println!("marketplace up (one process, data in {})", args.data_dir.join("single").display());
    println!("  seller server   http://{}", running.seller_addr);
    println!("  buyer server    http://{}", running.buyer_addr);
    println!("  payments (SOAP) http://{}/soap", running.payments_addr);
    println!("  endpoints written to {}", args.cluster_json.display());
    println!("Ctrl-C stops it.");
    http::shutdown_signal().await;
    println!("stopping...");
    running.shutdown().await;
    Ok(())
}

async fn payments(args: PaymentsArgs) -> Result<(), String> {
    let (listener, addr) = http::bind(args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
    let service = Arc::new(PaymentsService::new(PaymentsConfig {
        approve_rate: args.approve_rate,
        seed: args.seed,
        public_url: format!("http://{addr}/soap"),
    }));
    tracing::info!(%addr, "payment service listening");
    http::serve(listener, service, Limits::default(), http::shutdown_signal()).await.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("market: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up_single(args).await,
            Command::Payments(args) => payments(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("market: {e}");
            ExitCode::FAILURE
        }
    }
}
