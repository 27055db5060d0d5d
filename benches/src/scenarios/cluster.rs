//! A reference cluster for one scenario run: `market up` in a temporary data directory on a
//! free block of loopback ports, failure injection (kill -9 by process name, taken from
//! `cluster.json`), and the product-db leader as `market status` reports it.
//!
//! The cluster is stopped with SIGTERM to `market up`, which stops its 19 children; the
//! [`Drop`] impl does the same (blocking) so that an early return or a panic leaves no
//! processes behind.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clients::ClusterFile;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Ports the reference cluster uses from its base port (payments at +0 … replicas up to +64).
const PORT_SPAN: u16 = 70;
/// Attempts at starting a cluster before the run gives up.
pub const START_ATTEMPTS: u32 = 3;
/// Longest wait for `market up` to report a healthy cluster.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for `market up` to stop its children after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Finds the `market` binary: `explicit`, else next to this executable.
pub fn find_market(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("{}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let dir = exe.parent().ok_or("the executable has no directory")?;
    let market = dir.join("market");
    if market.is_file() {
        Ok(market)
    } else {
        Err(format!(
            "the `market` binary is not in {} (run `cargo build --release --bins` first, \
             or pass --market PATH)",
            dir.display()
        ))
    }
}

/// The range the kernel draws ephemeral ports from (Linux; elsewhere the IANA range).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((49_152, 65_535))
}

/// Where to look for a port block: below the ephemeral range when there is room (a port the
/// kernel hands to an outgoing connection, say a starting replica's first dial, between our
/// check and `market up`'s bind would make the cluster fail to start), else 20,000-50,000.
fn port_search_range() -> (u64, u64) {
    let (ephemeral_lo, _) = ephemeral_ports();
    let lo = 10_000u64;
    let hi = u64::from(ephemeral_lo).saturating_sub(u64::from(PORT_SPAN));
    if hi > lo + 1_000 {
        (lo, hi)
    } else {
        (20_000, 50_000)
    }
}

/// A block of `PORT_SPAN` consecutive loopback ports that are free for both TCP and UDP right
/// now (the cluster uses TCP for HTTP and UDP for QUIC).
fn free_base_port() -> Result<u16, String> {
    let (lo, hi) = port_search_range();
    let width = hi - lo;
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut candidate = lo + (rand::random::<u64>() ^ seed) % width;
    for _ in 0..50 {
        let base = candidate as u16;
        let all_free = (base..base + PORT_SPAN).all(|p| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
                && UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
        });
        if all_free {
            return Ok(base);
        }
        candidate = lo + (candidate - lo + 997) % width;
    }
    Err("no free block of loopback ports found".into())
}

/// A running reference cluster.
pub struct Cluster {
    market: PathBuf,
    up: Option<Child>,
    data_dir: PathBuf,
    /// Endpoints and pids, as `market up` wrote them.
    pub file: ClusterFile,
    /// Processes started by failure injection ([`Handle::start_node`]), stopped with the rest.
    extra: Arc<Mutex<Vec<Child>>>,
    // Kept last so the directory outlives the processes using it.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `market up` in a fresh temporary directory and waits until it is healthy; with
    /// `lease_reads`, the product database uses its opt-in lease reads; with
    /// `restart_crashed`, `market up` starts a killed process again at once. A start that fails
    /// (a port taken between the check and the bind, say) is reported on stderr and tried
    /// again on a fresh port block, up to [`START_ATTEMPTS`] times.
    pub fn start(market: &Path, lease_reads: bool, restart_crashed: bool) -> Result<Self, String> {
        let mut attempt = 1;
        loop {
            match Self::start_once(market, lease_reads, restart_crashed) {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt < START_ATTEMPTS => {
                    eprintln!("(cluster start {attempt} failed, trying again: {e})");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn start_once(market: &Path, lease_reads: bool, restart_crashed: bool) -> Result<Self, String> {
        let mut dir = tempfile::Builder::new()
            .prefix("market-scenario-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        if std::env::var_os("SCENARIO_KEEP").is_some() {
            // For a post-mortem: the directory (logs, data) stays after the run.
            dir.disable_cleanup(true);
            eprintln!("(cluster directory kept: {})", dir.path().display());
        }
        let data_dir = dir.path().join("data");
        let json = dir.path().join("cluster.json");
        let base = free_base_port()?;
        let log =
            std::fs::File::create(dir.path().join("up.log")).map_err(|e| format!("up.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let up = Command::new(market)
            .arg("up")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--base-port")
            .arg(base.to_string())
            .arg("--cluster-json")
            .arg(&json)
            .args(lease_reads.then_some("--lease-reads"))
            .args(restart_crashed.then_some("--restart-crashed"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", market.display()))?;
        let mut cluster = Self {
            market: market.to_path_buf(),
            up: Some(up),
            data_dir,
            file: ClusterFile::default(),
            extra: Arc::default(),
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if json.exists() {
                if let Ok(file) = ClusterFile::load(&json) {
                    if !file.processes.is_empty() {
                        cluster.file = file;
                        return Ok(cluster);
                    }
                }
            }
            if let Some(up) = cluster.up.as_mut() {
                if let Ok(Some(status)) = up.try_wait() {
                    let log = std::fs::read_to_string(cluster._dir.path().join("up.log"))
                        .unwrap_or_default();
                    return Err(format!("market up exited ({status}):\n{log}"));
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "the cluster was not up within {READY_TIMEOUT:?} (logs in {})",
                    cluster.data_dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What failure injection needs, shareable with another thread.
    pub fn handle(&self) -> Handle {
        Handle {
            market: self.market.clone(),
            config: self.data_dir.join("cluster.toml"),
            data_dir: self.data_dir.clone(),
            file: self.file.clone(),
            extra: Arc::clone(&self.extra),
        }
    }

    /// Stops every process (SIGTERM to `market up`, SIGKILL after a grace period), and those
    /// failure injection started.
    pub fn stop(&mut self) {
        for mut child in std::mem::take(&mut *self.extra.lock().unwrap_or_else(|p| p.into_inner()))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let Some(mut up) = self.up.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(up.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = up.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // market up did not finish: kill it and whatever it started.
        for p in &self.file.processes {
            let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
        }
        let _ = up.kill();
        let _ = up.wait();
    }
}

/// Failure injection into a running [`Cluster`].
#[derive(Debug, Clone)]
pub struct Handle {
    market: PathBuf,
    config: PathBuf,
    data_dir: PathBuf,
    file: ClusterFile,
    extra: Arc<Mutex<Vec<Child>>>,
}

impl Handle {
    /// The pid of the process named `name` (`seller-0`, `product-db-3`, …).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.file
            .processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pid)
    }

    /// kill -9 of the process named `name`; returns its pid.
    pub fn kill9(&self, name: &str) -> Result<u32, String> {
        let pid = self
            .pid_of(name)
            .ok_or_else(|| format!("no process named {name}"))?;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL)
            .map_err(|e| format!("kill -9 {name} ({pid}): {e}"))?;
        Ok(pid)
    }

    /// Waits (at most five seconds) until the process killed as `pid` is gone, so that its
    /// files are closed.
    pub fn wait_gone(&self, pid: u32) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            // Gone, or a zombie until `market up` reaps it whose other threads have exited
            // too (the last one out closes the process's files and sockets).
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
            if zombie && threads <= 1 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!("process {pid} still there 5 s after kill -9"))
    }

    /// A lost disk: once the killed process `pid` of replica `<role>-<id>` is gone, empties
    /// the replica's data directory and starts it again ([`Handle::start_node`]).
    pub fn restart_emptied(&self, role: &str, id: u64, pid: u32) -> Result<(), String> {
        self.wait_gone(pid)?;
        self.empty_data_dir(&format!("{role}-{id}"))?;
        self.start_node(role, id)
    }

    /// Empties the data directory of database replica `name` (`customer-db-0`, …): a lost
    /// disk. Kill the replica first.
    pub fn empty_data_dir(&self, name: &str) -> Result<(), String> {
        let dir = self.data_dir.join(name);
        std::fs::remove_dir_all(&dir).map_err(|e| format!("emptying {}: {e}", dir.display()))?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("recreating {}: {e}", dir.display()))
    }

    /// Starts `market node <role> --id <id>` on the cluster's configuration (its output
    /// appended to `logs/<role>-<id>.log`); it is stopped with the cluster.
    pub fn start_node(&self, role: &str, id: u64) -> Result<(), String> {
        let path = self.data_dir.join("logs").join(format!("{role}-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.market)
            .args(["node", role, "--id", &id.to_string(), "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {role}-{id}: {e}"))?;
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(())
    }

    /// Product-db replica roles from `market status`: `(id, role)` for every replica that
    /// answered (`leader`, `follower`, `candidate`, …).
    pub fn product_db_roles(&self) -> Result<Vec<(u64, String)>, String> {
        Ok(parse_product_roles(&self.status()?))
    }

    /// The applied index of every customer-db replica that answered `market status`.
    pub fn customer_db_applied(&self) -> Result<Vec<(u64, u64)>, String> {
        Ok(parse_customer_applied(&self.status()?))
    }

    /// `market status` output.
    fn status(&self) -> Result<String, String> {
        let out = Command::new(&self.market)
            .arg("status")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("market status: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "market status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The product-db leader's id, asking `market status` until one replica says it leads
    /// (at most `wait`).
    pub fn product_db_leader(&self, wait: Duration) -> Result<u64, String> {
        let started = Instant::now();
        loop {
            let roles = self.product_db_roles()?;
            if let Some((id, _)) = roles.iter().find(|(_, r)| r == "leader") {
                return Ok(*id);
            }
            if started.elapsed() > wait {
                return Err(format!("no product-db leader within {wait:?}: {roles:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(id, role)` of the product-db rows of `market status` output.
fn parse_product_roles(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let name = cols.next()?;
            let id = name.strip_prefix("product-db-")?.parse().ok()?;
            let role = cols.next()?;
            (role != "-").then(|| (id, role.to_string()))
        })
        .collect()
}

/// `(id, applied)` of the customer-db rows of `market status` output that are up.
fn parse_customer_applied(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let id = cols.first()?.strip_prefix("customer-db-")?.parse().ok()?;
            (cols.get(6) == Some(&"up")).then_some(())?;
            Some((id, cols.get(5)?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_table() {
        let text = "\
replica        role         term   leader     commit    applied  health
customer-db-0  member          0        -          7          7  up
product-db-0   follower        1        1          9          9  up
product-db-1   leader          1        1          9          9  up
product-db-2   -               -        -          -          -  DOWN (unreachable)
";
        assert_eq!(
            parse_product_roles(text),
            vec![(0, "follower".to_string()), (1, "leader".to_string())]
        );
        assert_eq!(parse_customer_applied(text), vec![(0, 7)]);
        let down = "customer-db-1  -  -  -  -  -  DOWN (not running: refused)\n";
        assert_eq!(parse_customer_applied(down), vec![]);
    }
}
