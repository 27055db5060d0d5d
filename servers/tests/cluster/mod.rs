//! Support for tests that run the distributed marketplace as real processes on loopback:
//! start `market up` on a private data directory and port block, read its cluster.json,
//! kill -9 processes, restart replicas, find the Raft leader, and drive a recorded load.

#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clients::api::{Card, CreateAccount, Login, NewItem, SearchQuery};
use clients::{BuyerClient, ClientConfig, ClientError, ClusterFile, SellerClient};
use rand::Rng;
use servers::cluster::Cluster;

pub const MARKET: &str = env!("CARGO_BIN_EXE_market");

/// One test at a time: each cluster is 19 processes on a 2-core machine.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct TestCluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub config: PathBuf,
    pub cluster: Cluster,
    pub file: ClusterFile,
    up: Child,
    /// Replicas this test started again, by process name (the latest last).
    extra: Vec<(String, Child)>,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// A block of 70 free ports, below the kernel's ephemeral range (32,768 and up on Linux), so
/// no outgoing connection of a starting replica can take one before `market up` binds it.
fn free_base_port() -> u16 {
    let mut rng = rand::thread_rng();
    for _ in 0..50 {
        let base = rng.gen_range(100..327u16) * 100;
        if (0..70).all(|o| port_free(base + o)) {
            return base;
        }
    }
    panic!("no free block of 70 ports found");
}

impl TestCluster {
    /// Writes a reference cluster (tweaked by `tweak`) into a fresh directory and starts it.
    pub async fn start(tweak: impl FnOnce(&mut Cluster)) -> Self {
        Self::start_with_args(tweak, &[]).await
    }

    /// [`TestCluster::start`] with extra `market up` arguments.
    pub async fn start_with_args(tweak: impl FnOnce(&mut Cluster), args: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut cluster = Cluster::reference(PathBuf::from("."), free_base_port());
        cluster.certs_dir = PathBuf::from("certs");
        tweak(&mut cluster);
        cluster
            .save(&dir.join("cluster.toml"))
            .expect("save cluster.toml");
        let mut c = Self::up_with_args(&dir, args).await;
        c._tmp = Some(tmp);
        c
    }

    /// Starts `market up` on an existing data directory and waits for cluster.json.
    pub async fn up(dir: &Path) -> Self {
        Self::up_with_args(dir, &[]).await
    }

    /// [`TestCluster::up`] with extra `market up` arguments.
    pub async fn up_with_args(dir: &Path, args: &[&str]) -> Self {
        let json = dir.join("cluster.json");
        let _ = std::fs::remove_file(&json);
        let log = std::fs::File::create(dir.join("up.log")).expect("up.log");
        let up = Command::new(MARKET)
            .args(["up", "--data-dir"])
            .arg(dir)
            .arg("--cluster-json")
            .arg(&json)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn market up");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !json.exists() {
            assert!(
                Instant::now() < deadline,
                "cluster not up in 90 s: {}",
                std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let file = ClusterFile::load(&json).expect("cluster.json");
        let config = dir.join("cluster.toml");
        let cluster = Cluster::load(&config).expect("cluster.toml");
        Self {
            dir: dir.to_path_buf(),
            _tmp: None,
            config,
            cluster,
            file,
            up,
            extra: Vec::new(),
        }
    }

    /// Moves the temporary directory out, so the data outlives this handle.
    pub fn take_tempdir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.file
            .processes
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .pid
    }

    /// Reads cluster.json again (`market up --restart-crashed` rewrites it with new pids).
    pub fn reload_file(&mut self) {
        self.file = ClusterFile::load(&self.dir.join("cluster.json")).expect("cluster.json");
    }

    /// Kills the process named `name` with SIGKILL: the one this test started last under
    /// that name, or else the one `market up` started.
    pub fn kill9(&self, name: &str) {
        match self.extra.iter().rev().find(|(n, _)| n == name) {
            Some((_, child)) => kill9(child.id()),
            None => kill9(self.pid(name)),
        }
    }

    /// Kills `market up` itself and every process it started, all with SIGKILL.
    pub fn kill9_everything(&mut self) {
        kill9(self.up.id());
        for p in &self.file.processes {
            kill9(p.pid);
        }
        for (_, c) in &mut self.extra {
            let _ = c.kill();
        }
        let _ = self.up.wait();
    }

    /// Starts `market node product-db --id N` again (after a kill).
    pub fn restart_product_db(&mut self, id: u64) {
        self.restart_db("product-db", id);
    }

    /// Starts `market node customer-db --id N` again (after a kill).
    pub fn restart_customer_db(&mut self, id: u64) {
        self.restart_db("customer-db", id);
    }

    fn restart_db(&mut self, role: &str, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{role}-{id}.log")))
            .expect("log");
        let child = Command::new(MARKET)
            .args(["node", role, "--id", &id.to_string(), "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("restart");
        self.extra.push((format!("{role}-{id}"), child));
    }

    /// What `market status` prints.
    pub fn status_text(&self) -> String {
        let out = Command::new(MARKET)
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .expect("market status");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `market status` rows: name -> (role, leader column, applied index).
    pub fn status(&self) -> BTreeMap<String, (String, String, u64)> {
        let text = self.status_text();
        let mut rows = BTreeMap::new();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() >= 7 && cols[6] == "up" {
                rows.insert(
                    cols[0].to_string(),
                    (
                        cols[1].to_string(),
                        cols[3].to_string(),
                        cols[5].parse().unwrap_or(0),
                    ),
                );
            }
        }
        rows
    }

    /// The product-db leader's replica id (bounded wait for an election).
    pub async fn product_leader(&self) -> u64 {
        for _ in 0..50 {
            if let Some((name, _)) = self
                .status()
                .into_iter()
                .find(|(n, (role, _, _))| n.starts_with("product-db-") && role == "leader")
            {
                return name.trim_start_matches("product-db-").parse().expect("id");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no product-db leader");
    }

    pub fn seller_urls(&self) -> Vec<String> {
        self.file.seller_servers.clone()
    }

    pub fn buyer_urls(&self) -> Vec<String> {
        self.file.buyer_servers.clone()
    }

    /// SIGTERM to `market up` (it stops every process), bounded wait, then SIGKILL.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.up.id().to_string()])
            .stderr(Stdio::null())
            .status();
        for _ in 0..150 {
            if let Ok(Some(_)) = self.up.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill9_everything();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Ok(None) = self.up.try_wait() {
            kill9(self.up.id());
            for p in &self.file.processes {
                kill9(p.pid);
            }
        }
        for (_, c) in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET `path` from a base URL like `http://127.0.0.1:7010`, returning the whole response.
pub async fn http_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// The value of one series (name and labels exactly as rendered) in a `/metrics` text.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

pub fn kill9(pid: u32) {
    if pid > 0 {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn card() -> Card {
    Card {
        name: "Bea".into(),
        number: "4111111111111111".into(),
        expiry: "12/39".into(),
        cvv: "123".into(),
    }
}

/// Whether an error is an expected domain answer under contention (declined payment, sold
/// out, empty cart) rather than a failure of the system.
pub fn expected(e: &ClientError) -> bool {
    matches!(
        e.problem().map(|p| p.code.as_str()),
        Some("payment_declined" | "insufficient_quantity" | "cart_empty")
    )
}

/// Waits until the load has made `more` calls beyond those it had made so far: the failure
/// tests inject each fault once the cluster has demonstrably served, not after a fixed time.
/// Bounded: panics after 60 s without that progress.
pub async fn wait_for_calls(ledger: &Mutex<Ledger>, more: u64) {
    let calls = || ledger.lock().expect("ledger").calls;
    let target = calls() + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while calls() < target {
        assert!(
            Instant::now() < deadline,
            "the load made {} of {more} calls in 60 s",
            more + calls() - target
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the clients saw acknowledged.
#[derive(Default, Debug)]
pub struct Ledger {
    /// item id -> (seller index, listed, removed)
    pub items: BTreeMap<String, (usize, u64, u64)>,
    /// buyer index -> purchase ids
    pub purchases: BTreeMap<usize, BTreeSet<u64>>,
    pub calls: u64,
    pub failures: Vec<String>,
}

#[derive(Clone)]
pub struct Accounts {
    pub sellers: Vec<(String, String)>,
    pub buyers: Vec<(String, String)>,
}

/// Creates `n` sellers and `n` buyers with usernames unique to `tag`.
pub async fn create_accounts(c: &TestCluster, n: usize, tag: &str) -> Accounts {
    let seller = SellerClient::new(c.seller_urls()).expect("client");
    let buyer = BuyerClient::new(c.buyer_urls()).expect("client");
    let mut accounts = Accounts {
        sellers: Vec::new(),
        buyers: Vec::new(),
    };
    for i in 0..n {
        let (u, p) = (format!("s{tag}{i}"), "seller password".to_string());
        seller
            .create_seller(&CreateAccount {
                name: u.clone(),
                username: u.clone(),
                password: p.clone(),
            })
            .await
            .expect("create seller");
        accounts.sellers.push((u, p));
        let (u, p) = (format!("b{tag}{i}"), "buyer password".to_string());
        buyer
            .create_buyer(&CreateAccount {
                name: u.clone(),
                username: u.clone(),
                password: p.clone(),
            })
            .await
            .expect("create buyer");
        accounts.buyers.push((u, p));
    }
    accounts
}

fn config_on(replica: usize) -> ClientConfig {
    ClientConfig {
        initial_replica: Some(replica),
        ..ClientConfig::default()
    }
}

/// Runs sellers and buyers until `stop` is set; every acknowledged effect goes to the ledger,
/// every failed call (anything but an expected domain answer) to `failures`.
/// A [`run_load`] running in the background, with its stop flag and ledger.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Starts [`run_load`] on `c`'s frontends, every client on replica `initial_replica`.
    pub fn start(c: &TestCluster, accounts: &Accounts, initial_replica: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let task = {
            let (stop, ledger, accounts) = (stop.clone(), ledger.clone(), accounts.clone());
            let (sellers, buyers) = (c.seller_urls(), c.buyer_urls());
            tokio::spawn(async move {
                run_load(sellers, buyers, &accounts, initial_replica, stop, ledger).await
            })
        };
        Self { stop, ledger, task }
    }

    /// Stops the load after a crash of everything: waits up to 60 s for its clients, whose
    /// calls may fail.
    pub async fn abandon(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(60), self.task).await;
    }

    /// Stops the load, waits for its clients and returns what they saw.
    pub async fn finish(self) -> Ledger {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("load");
        Arc::try_unwrap(self.ledger)
            .expect("ledger")
            .into_inner()
            .expect("lock")
    }
}

pub async fn run_load(
    seller_urls: Vec<String>,
    buyer_urls: Vec<String>,
    accounts: &Accounts,
    initial_replica: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    use std::sync::atomic::Ordering;
    let mut tasks = Vec::new();
    for (i, (u, p)) in accounts.sellers.iter().enumerate() {
        let client = SellerClient::with_config(seller_urls.clone(), config_on(initial_replica))
            .expect("client");
        let (u, p, stop, ledger) = (u.clone(), p.clone(), stop.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            client
                .login_seller(&Login {
                    username: u,
                    password: p,
                })
                .await
                .expect("seller login");
            let mut mine: Vec<String> = Vec::new();
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let r = match k % 3 {
                    0 if !mine.is_empty() => {
                        let id = mine[(k as usize / 3) % mine.len()].clone();
                        match client.remove_item(&id, Some(1)).await {
                            Ok(_) => {
                                if let Some(e) = ledger.lock().expect("lock").items.get_mut(&id) {
                                    e.2 += 1;
                                }
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    1 if !mine.is_empty() => {
                        let id = mine[(k as usize) % mine.len()].clone();
                        client
                            .change_price(&id, 100 + (k as i64 % 50))
                            .await
                            .map(|_| ())
                    }
                    _ => {
                        let item = NewItem {
                            name: format!("thing {k}"),
                            category: (i % 10) as i64,
                            keywords: vec!["test".into()],
                            condition: clients::api::Condition::New,
                            price_cents: 100,
                            quantity: 8,
                        };
                        match client.add_item(&item).await {
                            Ok(it) => {
                                ledger
                                    .lock()
                                    .expect("lock")
                                    .items
                                    .insert(it.id.clone(), (i, 8, 0));
                                mine.push(it.id);
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                let mut l = ledger.lock().expect("lock");
                l.calls += 1;
                if let Err(e) = r {
                    if !expected(&e) {
                        l.failures.push(format!("seller {i}: {e}"));
                    }
                }
            }
        }));
    }
    for (i, (u, p)) in accounts.buyers.iter().enumerate() {
        let client = BuyerClient::with_config(buyer_urls.clone(), config_on(initial_replica))
            .expect("client");
        let (u, p, stop, ledger) = (u.clone(), p.clone(), stop.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            client
                .login_buyer(&Login {
                    username: u,
                    password: p,
                })
                .await
                .expect("buyer login");
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let query = SearchQuery {
                    category: Some((k % 10) as i64),
                    keywords: vec![],
                    limit: Some(20),
                };
                let mut results = Vec::new();
                let r = match client.search_items(&query).await {
                    Ok(items) => {
                        results = items.items;
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let mut outcomes = vec![r];
                if let Some(item) = results.get((k as usize) % results.len().max(1)) {
                    outcomes.push(client.add_to_cart(&item.id, 1).await.map(|_| ()));
                    match client.make_purchase(&card()).await {
                        Ok(p) => {
                            ledger
                                .lock()
                                .expect("lock")
                                .purchases
                                .entry(i)
                                .or_default()
                                .insert(p.purchase_id);
                            outcomes.push(Ok(()));
                        }
                        Err(e) => {
                            // A declined or refused purchase leaves the cart: empty it so the
                            // next round starts clean.
                            outcomes.push(Err(e));
                            outcomes.push(client.clear_cart().await);
                        }
                    }
                }
                if k % 5 == 0 {
                    outcomes.push(client.get_purchase_history().await.map(|_| ()));
                }
                let mut l = ledger.lock().expect("lock");
                for r in outcomes {
                    l.calls += 1;
                    if let Err(e) = r {
                        if !expected(&e) {
                            l.failures.push(format!("buyer {i}: {e}"));
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("load task");
    }
}

/// Checks every acknowledged effect through the API: each seller's items are exactly the
/// acknowledged ones, each item's quantity equals listed - removed - sold (sold counted from
/// the buyers' purchase histories), and each buyer's history holds every acknowledged
/// purchase. With `exact`, nothing beyond the acknowledged effects exists either.
pub async fn verify(c: &TestCluster, accounts: &Accounts, ledger: &Ledger, exact: bool) {
    let mut sold: BTreeMap<String, u64> = BTreeMap::new();
    for (i, (u, p)) in accounts.buyers.iter().enumerate() {
        let client = BuyerClient::new(c.buyer_urls()).expect("client");
        client
            .login_buyer(&Login {
                username: u.clone(),
                password: p.clone(),
            })
            .await
            .expect("login");
        let history = client.get_purchase_history().await.expect("history");
        let ids: BTreeSet<u64> = history.purchases.iter().map(|p| p.purchase_id).collect();
        let acked = ledger.purchases.get(&i).cloned().unwrap_or_default();
        assert!(
            acked.is_subset(&ids),
            "buyer {i}: acknowledged purchases {acked:?} missing from history {ids:?}"
        );
        if exact {
            assert_eq!(
                acked, ids,
                "buyer {i}: purchases beyond the acknowledged ones"
            );
        }
        for p in &history.purchases {
            for line in &p.lines {
                *sold.entry(line.item_id.clone()).or_default() += line.quantity;
            }
        }
    }
    for (i, (u, p)) in accounts.sellers.iter().enumerate() {
        let client = SellerClient::new(c.seller_urls()).expect("client");
        client
            .login_seller(&Login {
                username: u.clone(),
                password: p.clone(),
            })
            .await
            .expect("login");
        let items = client.all_items_by_seller().await.expect("items");
        let listed: BTreeMap<String, u64> = items
            .items
            .iter()
            .map(|it| (it.id.clone(), it.quantity))
            .collect();
        for (id, (_, created, removed)) in ledger.items.iter().filter(|(_, (s, _, _))| *s == i) {
            let quantity = *listed
                .get(id)
                .unwrap_or_else(|| panic!("seller {i}: acknowledged item {id} is missing"));
            let sold = sold.get(id).copied().unwrap_or(0);
            if exact {
                assert_eq!(
                    quantity,
                    created - removed - sold,
                    "item {id}: listed {created}, removed {removed}, sold {sold}"
                );
            } else {
                // Unacknowledged removals may have happened too; they only lower the quantity.
                assert!(
                    quantity + removed + sold <= *created,
                    "item {id}: listed {created}, removed {removed}, sold {sold}, left {quantity}"
                );
            }
        }
        if exact {
            let acked: BTreeSet<&String> = ledger
                .items
                .iter()
                .filter(|(_, (s, _, _))| *s == i)
                .map(|(id, _)| id)
                .collect();
            let have: BTreeSet<&String> = listed.keys().collect();
            assert_eq!(
                acked, have,
                "seller {i}: items beyond the acknowledged ones (a retry took effect twice?)"
            );
        }
    }
}
