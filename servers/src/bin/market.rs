//! `market`: every server-side process of the marketplace, and `market up`, which runs a
//! whole marketplace locally.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: every process here is allocation-heavy (QUIC
/// packets, JSON, postcard frames), and glibc's malloc showed up in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (and the processes it starts).
///
/// mimalloc advises the kernel to back its arenas with 2 MiB pages, and returns freed pages
/// after a second. The next allocation there faults a whole huge page back in, which the
/// kernel zeroes: under load that zeroing (`clear_page_erms`) took about 8% of the cluster's
/// CPU, all of it on the replicas' consensus threads. With 4 KiB pages a fault zeroes only
/// what is touched; the 100+100 scenario gained 2-10% calls/s (interleaved runs).
fn disable_transparent_huge_pages() {
    // Best effort: a kernel without it leaves the default, which is only slower.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}
use servers::cluster::{Cluster, RoleKind};
use servers::deploy::{self, up::UpOptions};
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
    /// Runs the reference cluster locally as separate processes (or, with --single, the whole
    /// marketplace in one process) and writes cluster.json with its endpoints.
    Up(UpArgs),
    /// Runs one database replica.
    Node {
        /// Which database.
        #[arg(value_enum)]
        db: DbKind,
        /// Replica id in the cluster file.
        #[arg(long)]
        id: u64,
        /// The cluster file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Runs one seller or buyer HTTP server.
    Serve {
        /// Which server.
        #[arg(value_enum)]
        role: FrontendKind,
        /// Server id in the cluster file.
        #[arg(long)]
        id: u64,
        /// The cluster file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Runs the financial transactions (SOAP) service.
    Payments(PaymentsArgs),
    /// Makes the cluster CA and a certificate for every process of the cluster file.
    Certs {
        /// The cluster file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Replace existing certificates.
        #[arg(long)]
        force: bool,
    },
    /// Shows every database replica's role, term, commit and applied index.
    Status {
        /// The cluster file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DbKind {
    /// The customer database (atomic broadcast).
    CustomerDb,
    /// The product database (Raft).
    ProductDb,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FrontendKind {
    /// The seller server.
    Seller,
    /// The buyer server.
    Buyer,
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
    /// Opt-in: the product database serves reads from its Raft leader's lease instead of a
    /// ReadIndex round (`lease_reads` in cluster.toml; applies when cluster.toml is created).
    #[arg(long)]
    lease_reads: bool,
    /// Start a process again when it exits, as a production supervisor (systemd's
    /// `Restart=always`) would; by default an exited process is reported and left down.
    #[arg(long)]
    restart_crashed: bool,
}

#[derive(clap::Args)]
struct PaymentsArgs {
    /// Take the listen address, approval rate and seed from this cluster file.
    #[arg(long)]
    config: Option<PathBuf>,
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft_engine=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
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
    std::fs::write(&args.cluster_json, text)
        .map_err(|e| format!("{}: {e}", args.cluster_json.display()))?;
    println!(
        "marketplace up (one process, data in {})",
        args.data_dir.join("single").display()
    );
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
    let (listen, approve_rate, seed, delay_ms) = match &args.config {
        Some(path) => {
            let c = load(path)?;
            (
                c.payments.listen,
                c.payments.approve_rate,
                c.payments.seed,
                c.payments.delay_ms,
            )
        }
        None => (args.listen, args.approve_rate, args.seed, 0),
    };
    let (listener, addr) = http::bind(listen)
        .await
        .map_err(|e| format!("{listen}: {e}"))?;
    let service = Arc::new(PaymentsService::new(PaymentsConfig {
        approve_rate,
        seed,
        public_url: format!("http://{addr}/soap"),
        delay: Duration::from_millis(delay_ms),
    }));
    tracing::info!(%addr, "payment service listening");
    http::serve(
        listener,
        service,
        Limits::default(),
        http::shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

fn load(path: &Path) -> Result<Cluster, String> {
    Cluster::load(path).map_err(|e| e.to_string())
}

fn certs(config: &Path, force: bool) -> Result<(), String> {
    let cluster = load(config)?;
    if cluster.certs_dir.join("ca.pem").exists() && !force {
        return Err(format!(
            "{} already holds a CA; pass --force to replace it",
            cluster.certs_dir.display()
        ));
    }
    let names = cluster.cert_names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    transport::certs::generate_cluster(&cluster.certs_dir, &refs).map_err(|e| e.to_string())?;
    println!(
        "wrote the cluster CA and {} certificates to {}",
        names.len(),
        cluster.certs_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_tracing();
    // Replicas, frontends and the payment service run on a current-thread runtime: on small
    // machines cross-thread wake-ups cost more than they buy (QUIC RPC measured several times
    // faster this way), and a cluster runs many such processes side by side. The supervisor
    // and the one-process marketplace use the multi-thread runtime.
    let single_threaded = matches!(
        cli.command,
        Command::Node { .. } | Command::Serve { .. } | Command::Payments(_)
    );
    let built = if single_threaded {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("market: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) if args.single => up_single(args).await,
            Command::Up(args) => {
                deploy::up::run(UpOptions {
                    data_dir: args.data_dir,
                    base_port: args.base_port,
                    cluster_json: args.cluster_json,
                    approve_rate: args.approve_rate,
                    lease_reads: args.lease_reads,
                    ready_timeout: Duration::from_secs(90),
                    restart_crashed: args.restart_crashed,
                })
                .await
            }
            Command::Node { db, id, config } => {
                let role = match db {
                    DbKind::CustomerDb => RoleKind::CustomerDb,
                    DbKind::ProductDb => RoleKind::ProductDb,
                };
                deploy::node::run(load(&config)?, role, id).await
            }
            Command::Serve { role, id, config } => {
                let role = match role {
                    FrontendKind::Seller => RoleKind::Seller,
                    FrontendKind::Buyer => RoleKind::Buyer,
                };
                deploy::frontend::run(load(&config)?, role, id).await
            }
            Command::Payments(args) => payments(args).await,
            Command::Certs { config, force } => certs(&config, force),
            Command::Status { config } => deploy::status::run(load(&config)?).await,
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
