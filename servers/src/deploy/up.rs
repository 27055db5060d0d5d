//! `market up`: the reference cluster on loopback, as separate processes, supervised.
//!
//! 1. Reads `<data>/cluster.toml`, or writes the reference cluster there (5 customer-db and
//!    5 product-db replicas, 4 seller and 4 buyer servers, the payment service, on consecutive
//!    loopback ports from `--base-port`).
//! 2. Makes the cluster CA and every certificate in `<data>/certs` when missing.
//! 3. Starts every process from this same binary (`market node …`, `market serve …`,
//!    `market payments …`), each logging to `<data>/logs/<name>.log`.
//! 4. Waits until every frontend's `/healthz` answers 200 (which needs a quorum of both
//!    databases) and every database replica answers a status query without recovering (the
//!    customer database's ring needs every member to take its turns, so a write could
//!    otherwise wait for the slowest member to start), then writes `cluster.json` (endpoints,
//!    names, pids) and prints the servers.
//! 5. Restarts nothing silently: a process that exits is reported on the terminal and left
//!    down (tests and operators restart replicas on purpose), unless `--restart-crashed`
//!    asks for what a production supervisor (systemd's `Restart=always`) does: a process that
//!    exits is started again at once with the same arguments (after a growing pause if it
//!    keeps exiting within two seconds of its start), and `cluster.json` is rewritten with its
//!    new pid. That matters most for the customer database, whose ring waits at a dead
//!    member's turns (README, "Failure model"). Ctrl-C sends SIGTERM to every process, then
//!    SIGKILL to any still running after a grace period.
//!
//! Restarting `market up` on the same data directory brings the same data back: every
//! replica recovers from its own directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clients::cluster::{ClusterFile, ClusterProcess};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::frontend::{client_network, remote_logs};
use crate::cluster::{Cluster, RoleKind};

/// Settings of `market up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Data directory (cluster.toml, certs, logs, replica data).
    pub data_dir: PathBuf,
    /// First port of the reference cluster's block (used only when creating cluster.toml).
    pub base_port: u16,
    /// Where to write cluster.json.
    pub cluster_json: PathBuf,
    /// Payment approval rate (used only when creating cluster.toml).
    pub approve_rate: f64,
    /// Product database reads from the Raft leader's lease ([`Cluster::lease_reads`]; used
    /// only when creating cluster.toml).
    pub lease_reads: bool,
    /// How long to wait for the cluster to become healthy.
    pub ready_timeout: Duration,
    /// Start a process again when it exits (see the module docs).
    pub restart_crashed: bool,
}

/// How often the supervisor looks for exited processes when it restarts them.
const RESTART_POLL: Duration = Duration::from_millis(10);
/// A process that exits sooner than this after its start counts as crash-looping.
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(2);
/// The pause before restarting a crash-looping process grows by this per quick exit after
/// the first...
const RESTART_BACKOFF_STEP: Duration = Duration::from_millis(200);
/// ...up to this.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One supervised process.
pub struct Proc {
    /// Its name, e.g. `"product-db-2"`.
    pub name: String,
    /// Its role.
    pub role: RoleKind,
    /// The address it serves (HTTP for frontends and payments, client QUIC for replicas).
    pub addr: SocketAddr,
    /// The arguments after the binary.
    pub args: Vec<String>,
    child: Child,
    /// When the current child was started.
    started: Instant,
    /// Exits in a row that came within [`CRASH_LOOP_WINDOW`] of a start.
    quick_exits: u32,
}

impl Proc {
    /// Operating-system pid (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Loads `<data>/cluster.toml`, creating the reference cluster there if it does not exist,
/// and makes certificates when missing. Returns the cluster and the file's path.
pub fn prepare(
    data_dir: &Path,
    base_port: u16,
    approve_rate: f64,
    lease_reads: bool,
) -> Result<(Cluster, PathBuf), String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let path = data_dir.join("cluster.toml");
    if !path.exists() {
        let mut reference = Cluster::reference(PathBuf::from("."), base_port);
        reference.certs_dir = PathBuf::from("certs");
        reference.payments.approve_rate = approve_rate;
        reference.lease_reads = lease_reads;
        reference.save(&path).map_err(|e| e.to_string())?;
    }
    let cluster = Cluster::load(&path).map_err(|e| e.to_string())?;
    if !cluster.certs_dir.join("ca.pem").exists() {
        let names = cluster.cert_names();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        transport::certs::generate_cluster(&cluster.certs_dir, &refs)
            .map_err(|e| format!("certificates: {e}"))?;
    }
    Ok((cluster, path))
}

/// The processes of a cluster: name, role, served address and `market` arguments.
pub fn plan(cluster: &Cluster, config: &Path) -> Vec<(String, RoleKind, SocketAddr, Vec<String>)> {
    let cfg = config.to_string_lossy().into_owned();
    let mut out = Vec::new();
    out.push((
        "payments".to_string(),
        RoleKind::Payments,
        cluster.payments.listen,
        vec!["payments".into(), "--config".into(), cfg.clone()],
    ));
    for r in &cluster.customer_db {
        let args = vec![
            "node".into(),
            "customer-db".into(),
            "--id".into(),
            r.id.to_string(),
            "--config".into(),
            cfg.clone(),
        ];
        out.push((
            Cluster::cert_name(RoleKind::CustomerDb, r.id),
            RoleKind::CustomerDb,
            r.client,
            args,
        ));
    }
    for r in &cluster.product_db {
        let args = vec![
            "node".into(),
            "product-db".into(),
            "--id".into(),
            r.id.to_string(),
            "--config".into(),
            cfg.clone(),
        ];
        out.push((
            Cluster::cert_name(RoleKind::ProductDb, r.id),
            RoleKind::ProductDb,
            r.client,
            args,
        ));
    }
    for f in &cluster.seller {
        let args = vec![
            "serve".into(),
            "seller".into(),
            "--id".into(),
            f.id.to_string(),
            "--config".into(),
            cfg.clone(),
        ];
        out.push((
            Cluster::cert_name(RoleKind::Seller, f.id),
            RoleKind::Seller,
            f.listen,
            args,
        ));
    }
    for f in &cluster.buyer {
        let args = vec![
            "serve".into(),
            "buyer".into(),
            "--id".into(),
            f.id.to_string(),
            "--config".into(),
            cfg.clone(),
        ];
        out.push((
            Cluster::cert_name(RoleKind::Buyer, f.id),
            RoleKind::Buyer,
            f.listen,
            args,
        ));
    }
    out
}

/// Starts one `market` process with its output appended to `<data>/logs/<name>.log`.
pub fn spawn(exe: &Path, data_dir: &Path, name: &str, args: &[String]) -> Result<Child, String> {
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))
}

/// GET `http://addr/healthz` answered 200.
pub async fn healthy(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether every database replica answers a status query and none is still recovering.
async fn replicas_ready(cluster: &Cluster, network: &Arc<transport::QuicNetwork>) -> bool {
    let (customers, products) =
        remote_logs(cluster, network.clone() as Arc<dyn transport::Network>);
    for r in &cluster.customer_db {
        let node = Cluster::client_node_id(RoleKind::CustomerDb, r.id);
        match customers.status_of(node).await {
            Ok(s) if s.role != replication::Role::Recovering => {}
            _ => return false,
        }
    }
    for r in &cluster.product_db {
        let node = Cluster::client_node_id(RoleKind::ProductDb, r.id);
        if products.status_of(node).await.is_err() {
            return false;
        }
    }
    true
}

/// Sends SIGTERM to every process, waits up to `grace`, then SIGKILLs the rest.
pub async fn stop_all(procs: &mut [Proc], grace: Duration) {
    for p in procs.iter() {
        if let Some(pid) = p.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    for p in procs.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, p.child.wait()).await.is_err() {
            let _ = p.child.kill().await;
        }
    }
}

/// The cluster.json contents for running processes.
pub fn cluster_file(cluster: &Cluster, procs: &[Proc]) -> ClusterFile {
    ClusterFile {
        seller_servers: cluster
            .seller
            .iter()
            .map(|f| format!("http://{}", f.listen))
            .collect(),
        buyer_servers: cluster
            .buyer
            .iter()
            .map(|f| format!("http://{}", f.listen))
            .collect(),
        payments: Some(format!("http://{}", cluster.payments.listen)),
        processes: procs
            .iter()
            .map(|p| ClusterProcess {
                name: p.name.clone(),
                pid: p.pid(),
                role: p.role.name().to_string(),
                addr: p.addr.to_string(),
            })
            .collect(),
    }
}

/// Runs `market up` until Ctrl-C.
pub async fn run(options: UpOptions) -> Result<(), String> {
    let (cluster, config) = prepare(
        &options.data_dir,
        options.base_port,
        options.approve_rate,
        options.lease_reads,
    )?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the market binary: {e}"))?;
    let mut procs = Vec::new();
    for (name, role, addr, args) in plan(&cluster, &config) {
        match spawn(&exe, &options.data_dir, &name, &args) {
            Ok(child) => procs.push(Proc {
                name,
                role,
                addr,
                args,
                child,
                started: Instant::now(),
                quick_exits: 0,
            }),
            Err(e) => {
                stop_all(&mut procs, Duration::from_secs(5)).await;
                return Err(e);
            }
        }
    }
    println!(
        "started {} processes; waiting for the cluster to become healthy...",
        procs.len()
    );
    let started = Instant::now();
    let frontends: Vec<SocketAddr> = cluster
        .seller
        .iter()
        .chain(&cluster.buyer)
        .map(|f| f.listen)
        .collect();
    let admin = client_network(&cluster, RoleKind::Admin, 0)?;
    loop {
        let mut all = true;
        for addr in &frontends {
            if !healthy(*addr).await {
                all = false;
                break;
            }
        }
        if all && replicas_ready(&cluster, &admin).await {
            break;
        }
        if let Some(p) = procs.iter_mut().find_map(|p| match p.child.try_wait() {
            Ok(Some(status)) => Some((p.name.clone(), status)),
            _ => None,
        }) {
            stop_all(&mut procs, Duration::from_secs(5)).await;
            return Err(format!(
                "{} exited during startup ({}); see {}/logs/{}.log",
                p.0,
                p.1,
                options.data_dir.display(),
                p.0
            ));
        }
        if started.elapsed() > options.ready_timeout {
            stop_all(&mut procs, Duration::from_secs(5)).await;
            return Err(format!(
                "the cluster was not healthy within {:?}; see {}/logs",
                options.ready_timeout,
                options.data_dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin.shutdown();
    let file = cluster_file(&cluster, &procs);
    file.save(&options.cluster_json)
        .map_err(|e| e.to_string())?;
    println!(
        "marketplace up in {:.1} s (data in {})",
        started.elapsed().as_secs_f64(),
        options.data_dir.display()
    );
    for f in &cluster.seller {
        println!("  seller server {}  http://{}", f.id, f.listen);
    }
    for f in &cluster.buyer {
        println!("  buyer server {}   http://{}", f.id, f.listen);
    }
    println!("  payments (SOAP)  http://{}/soap", cluster.payments.listen);
    println!(
        "  endpoints and pids written to {}",
        options.cluster_json.display()
    );
    println!("Ctrl-C stops every process.");

    let mut reported = vec![false; procs.len()];
    let mut restart_at: Vec<Option<Instant>> = vec![None; procs.len()];
    let poll = if options.restart_crashed {
        RESTART_POLL
    } else {
        Duration::from_millis(500)
    };
    let signal = crate::http::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tokio::time::sleep(poll) => {
                let mut respawned = false;
                for (i, p) in procs.iter_mut().enumerate() {
                    if let Some(at) = restart_at[i] {
                        if Instant::now() < at {
                            continue;
                        }
                        restart_at[i] = None;
                        match spawn(&exe, &options.data_dir, &p.name, &p.args) {
                            Ok(child) => {
                                p.child = child;
                                p.started = Instant::now();
                                reported[i] = false;
                                respawned = true;
                                println!("market up: {} restarted (pid {})", p.name, p.pid());
                            }
                            Err(e) => println!("market up: {e}; not restarting it again"),
                        }
                        continue;
                    }
                    if reported[i] {
                        continue;
                    }
                    if let Ok(Some(status)) = p.child.try_wait() {
                        reported[i] = true;
                        if !options.restart_crashed {
                            println!("market up: {} exited ({status}); not restarting it (run `market {}` to restart)", p.name, p.args.join(" "));
                            continue;
                        }
                        // The first restart is immediate; only a process that keeps
                        // exiting soon after its start waits longer each time.
                        if p.started.elapsed() < CRASH_LOOP_WINDOW {
                            p.quick_exits = p.quick_exits.saturating_add(1);
                        } else {
                            p.quick_exits = 0;
                        }
                        let pause = (RESTART_BACKOFF_STEP * p.quick_exits.saturating_sub(1))
                            .min(RESTART_BACKOFF_MAX);
                        println!("market up: {} exited ({status}); restarting it in {} ms", p.name, pause.as_millis());
                        restart_at[i] = Some(Instant::now() + pause);
                    }
                }
                if respawned {
                    if let Err(e) = cluster_file(&cluster, &procs).save(&options.cluster_json) {
                        println!("market up: cluster.json not rewritten: {e}");
                    }
                }
            }
        }
    }
    println!("stopping every process...");
    stop_all(&mut procs, Duration::from_secs(10)).await;
    Ok(())
}
