//! The distributed marketplace as real processes on loopback (issue 7's acceptance):
//! kill -9 frontends, a product-db follower and the product-db leader under a steady load
//! with no failed call and nothing doubled, then a customer-db member killed and left down
//! (the others exclude it and go on) then started again (it is readmitted) with the same
//! guarantees; kill -9 everything
//! and restart `market up` on the same data with every acknowledged effect present (this
//! one with the product database's opt-in lease reads); a purchase whose frontend dies
//! mid-way is either complete or has its units back, never both, never neither; `market up
//! --restart-crashed` starting killed processes again under load with no failed call;
//! replicas started again with emptied data directories, and a customer-db member with an
//! older copy of its own, rebuilt or caught up under load with no failed call.

mod cluster;

use std::time::{Duration, Instant};

use clients::api::{CreateAccount, Login, NewItem};
use clients::{BuyerClient, SellerClient};
use cluster::{
    create_accounts, http_get, metric_value, verify, wait_for_calls, Ledger, Load, TestCluster,
    SERIAL,
};

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_die_under_load_and_no_call_fails() {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(|_| {}).await;
    let accounts = create_accounts(&c, 3, "f").await;
    // Every client starts on replica 0, so killing seller-0 and buyer-0 hits connected clients.
    let load = Load::start(&c, &accounts, 0);
    let ledger = &load.ledger;
    // Each fault comes once the load has made another PHASE_CALLS calls (about 1.5 s here).
    const PHASE_CALLS: u64 = 1000;
    wait_for_calls(ledger, PHASE_CALLS).await;
    c.kill9("seller-0");
    c.kill9("buyer-0");
    wait_for_calls(ledger, PHASE_CALLS).await;
    let leader = c.product_leader().await;
    let follower = (leader + 1) % 5;
    c.kill9(&format!("product-db-{follower}"));
    wait_for_calls(ledger, PHASE_CALLS).await;
    c.kill9(&format!("product-db-{leader}"));
    wait_for_calls(ledger, PHASE_CALLS).await;
    let new_leader = c.product_leader().await;
    assert_ne!(new_leader, leader, "a new leader was elected");
    c.restart_product_db(follower);
    c.restart_product_db(leader);
    wait_for_calls(ledger, PHASE_CALLS).await;
    // A customer-db member killed and left down: the others exclude it (a new epoch of the
    // atomic broadcast in which its turns are passes) and the calls go on without it, none
    // failing; `market status` says so. Started again, it catches up and is readmitted.
    c.kill9("customer-db-1");
    let excluded = "customer-db-1 down and excluded";
    let mut status = String::new();
    for _ in 0..40 {
        status = c.status_text();
        if status.contains(excluded) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        status.contains(excluded),
        "market status while customer-db-1 is down:\n{status}"
    );
    wait_for_calls(ledger, PHASE_CALLS).await;
    c.restart_customer_db(1);
    wait_for_calls(ledger, PHASE_CALLS).await;
    let ledger = load.finish().await;
    eprintln!(
        "load: {} calls, {} items, {} purchases, {} failed",
        ledger.calls,
        ledger.items.len(),
        ledger.purchases.values().map(|p| p.len()).sum::<usize>(),
        ledger.failures.len()
    );
    assert!(
        ledger.failures.is_empty(),
        "failed calls: {:?}",
        ledger.failures
    );
    assert!(
        ledger.calls > 50,
        "the load made only {} calls",
        ledger.calls
    );
    assert!(
        !ledger.items.is_empty() && !ledger.purchases.is_empty(),
        "the load made no purchases"
    );
    verify(&c, &accounts, &ledger, true).await;
    // The buyer server the clients moved to timed what it waited for.
    let metrics = http_get(&c.buyer_urls()[1], "/metrics").await;
    for series in [
        "market_db_call_seconds_count{db=\"customer-db\",kind=\"read\"}",
        "market_db_call_seconds_sum{db=\"customer-db\",kind=\"read\"}",
        "market_db_call_seconds_count{db=\"product-db\",kind=\"propose\"}",
        "market_payment_call_seconds_count",
        "market_payment_call_seconds_sum",
    ] {
        let value = metric_value(&metrics, series);
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{series}: {value:?} in\n{metrics}"
        );
    }

    // The restarted replicas rejoin and catch up with the leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.status();
        let leader_applied = status
            .get(&format!("product-db-{new_leader}"))
            .map(|r| r.2)
            .unwrap_or(0);
        let caught_up = [follower, leader].iter().all(|id| {
            status
                .get(&format!("product-db-{id}"))
                .is_some_and(|r| r.2 >= leader_applied && leader_applied > 0)
        });
        // The load has stopped: the restarted customer-db member reaches the others.
        let customer_applied = |id: u64| status.get(&format!("customer-db-{id}")).map(|r| r.2);
        let customer_caught_up = (0..5).filter(|id| *id != 1).all(|id| {
            customer_applied(1)
                .zip(customer_applied(id))
                .is_some_and(|(mine, theirs)| mine >= theirs && theirs > 0)
        });
        let caught_up = caught_up && customer_caught_up;
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted replicas did not catch up: {status:?}"
        );
        sleep_ms(300).await;
    }
    // And readmitted: `market status` has nothing to say about the customer database.
    let mut status = String::new();
    let readmitted = |s: &str| !s.contains("customer database:") && s.contains("customer-db-1");
    for _ in 0..100 {
        status = c.status_text();
        if readmitted(&status) {
            break;
        }
        sleep_ms(100).await;
    }
    assert!(
        readmitted(&status),
        "customer-db-1 was not readmitted:\n{status}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_restarts_killed_processes_and_no_call_fails() {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with_args(|_| {}, &["--restart-crashed"]).await;
    let accounts = create_accounts(&c, 2, "r").await;
    let load = Load::start(&c, &accounts, 0);
    let ledger = &load.ledger;
    wait_for_calls(ledger, 500).await;
    let victims = ["customer-db-2", "buyer-0"];
    let before: Vec<u32> = victims.iter().map(|v| c.pid(v)).collect();
    for v in victims {
        c.kill9(v);
    }
    // market up notices within its 10 ms poll and rewrites cluster.json with the new pids.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.reload_file();
        let now: Vec<u32> = victims.iter().map(|v| c.pid(v)).collect();
        if now.iter().zip(&before).all(|(n, b)| n != b && *n != 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted within 30 s: {before:?} -> {now:?}"
        );
        sleep_ms(50).await;
    }
    wait_for_calls(ledger, 1000).await;
    let status = c.status();
    for v in victims.iter().filter(|v| v.contains("-db-")) {
        assert!(status.contains_key(*v), "{v} is not up again: {status:?}");
    }
    let ledger = load.finish().await;
    assert!(
        ledger.failures.is_empty(),
        "failed calls: {:?}",
        ledger.failures
    );
    verify(&c, &accounts, &ledger, true).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_killed_then_restarted_keeps_every_acknowledged_effect() {
    let _serial = SERIAL.lock().await;
    // With the opt-in lease reads: after the restart a new Raft leader answers the checking
    // reads from its lease, and they must still see every acknowledged write.
    let mut c = TestCluster::start(|cluster| cluster.lease_reads = true).await;
    let accounts = create_accounts(&c, 2, "k").await;
    let load = Load::start(&c, &accounts, 1);
    let ledger = &load.ledger;
    wait_for_calls(ledger, 1000).await;
    // Snapshot what was acknowledged before the crash; calls in flight may fail now.
    let before = {
        let l = ledger.lock().expect("lock");
        Ledger {
            items: l.items.clone(),
            purchases: l.purchases.clone(),
            calls: l.calls,
            failures: Vec::new(),
        }
    };
    c.kill9_everything();
    load.abandon().await;
    assert!(
        !before.items.is_empty(),
        "nothing was acknowledged before the crash"
    );

    let dir = c.dir.clone();
    let keep = c.take_tempdir();
    drop(c);
    let c = TestCluster::up(&dir).await;
    verify(&c, &accounts, &before, false).await;
    c.stop().await;
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_whose_frontend_dies_midway_is_complete_or_undone() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(|cluster| {
        cluster.payments.approve_rate = 1.0;
        cluster.payments.delay_ms = 2000;
        cluster.reservation_ttl_secs = 3;
    })
    .await;
    let seller = SellerClient::new(c.seller_urls()).expect("client");
    seller
        .create_seller(&CreateAccount {
            name: "s".into(),
            username: "s".into(),
            password: "seller password".into(),
        })
        .await
        .expect("create");
    seller
        .login_seller(&Login {
            username: "s".into(),
            password: "seller password".into(),
        })
        .await
        .expect("login");
    let item = seller
        .add_item(&NewItem {
            name: "last lamp".into(),
            category: 1,
            keywords: vec![],
            condition: clients::api::Condition::Used,
            price_cents: 500,
            quantity: 1,
        })
        .await
        .expect("add");
    // The buyer talks to buyer-0 only, so its purchase dies with buyer-0.
    let urls = c.buyer_urls();
    let doomed = BuyerClient::new([urls[0].clone()]).expect("client");
    doomed
        .create_buyer(&CreateAccount {
            name: "b".into(),
            username: "b".into(),
            password: "buyer password".into(),
        })
        .await
        .expect("create");
    doomed
        .login_buyer(&Login {
            username: "b".into(),
            password: "buyer password".into(),
        })
        .await
        .expect("login");
    doomed.add_to_cart(&item.id, 1).await.expect("cart");
    let purchase = tokio::spawn(async move { doomed.make_purchase(&cluster::card()).await });
    // Kill buyer-0 once the unit is reserved, while the (slow) payment service decides.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let items = seller.all_items_by_seller().await.expect("items").items;
        if items.iter().any(|i| i.id == item.id && i.quantity == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the purchase never reserved");
        sleep_ms(20).await;
    }
    c.kill9("buyer-0");
    assert!(
        purchase.await.expect("task").is_err(),
        "the purchase cannot complete: its frontend is dead"
    );

    let other = BuyerClient::new(urls[1..].to_vec()).expect("client");
    other
        .login_buyer(&Login {
            username: "b".into(),
            password: "buyer password".into(),
        })
        .await
        .expect("login");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let quantity = other.get_item(&item.id).await.expect("item").quantity;
        let bought = other
            .get_purchase_history()
            .await
            .expect("history")
            .purchases
            .len();
        match (quantity, bought) {
            (1, 0) => break, // reservation lapsed: the unit is back, nothing bought
            (0, 1) => break, // the purchase completed
            (0, 0) => {}     // still reserved: wait for the lapse
            other => panic!("inconsistent: quantity {}, purchases {}", other.0, other.1),
        }
        assert!(Instant::now() < deadline, "the reservation never lapsed");
        sleep_ms(500).await;
    }
    c.stop().await;
}

/// Copies a (killed) replica's data directory to `to` (which must not exist).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Empties a killed replica's data directory (its files may still be closing: bounded
/// retries).
async fn empty_dir(dir: &std::path::Path) {
    for attempt in 0..50 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => break,
            Err(e) if attempt == 49 => panic!("cannot empty {}: {e}", dir.display()),
            Err(_) => sleep_ms(20).await,
        }
    }
    std::fs::create_dir_all(dir).expect("recreate the data directory");
}

/// A replaced or restored disk under load. A customer-db member and a product-db follower
/// are started again from older copies of their data directories (taken while they were
/// down earlier in the run, as a backup or a VM snapshot would be): the customer-db member
/// finds that its peers hold ids and turns the copy lacks and is rebuilt from a peer; the
/// product-db replica learns from the leader that it had acknowledged entries the copy
/// lacks, and catches up before it votes. Then a customer-db member and a product-db follower are killed,
/// their data directories emptied, and each is started again under its id. The emptied
/// customer-db member is rebuilt from a peer's snapshot and journal (the ring waits for it
/// meanwhile); the product-db replica catches up before it votes. No call fails, every
/// acknowledged effect is there, and every replica reaches the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_with_emptied_or_older_data_directories_rejoin_and_no_call_fails() {
    use servers::cluster::{Cluster, RoleKind};
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(|_| {}).await;
    let accounts = create_accounts(&c, 2, "e").await;
    let load = Load::start(&c, &accounts, 0);
    let ledger = &load.ledger;
    wait_for_calls(ledger, 1000).await;
    // customer-db-1 and a product-db follower: a copy of each one's directory now, more
    // history after it, then the copies back.
    let leader = c.product_leader().await;
    let (follower, copied) = ((leader + 1) % 5, (leader + 2) % 5);
    let copies = tempfile::tempdir().expect("tempdir");
    let backups = [(RoleKind::CustomerDb, 1), (RoleKind::ProductDb, copied)];
    let restart = |c: &mut TestCluster, kind: RoleKind, id: u64| match kind {
        RoleKind::CustomerDb => c.restart_customer_db(id),
        _ => c.restart_product_db(id),
    };
    let applied = |c: &TestCluster, id: u64| {
        c.status()
            .get(&format!("product-db-{id}"))
            .map_or(0, |r| r.2)
    };
    // What the leader had applied when the product-db copy was taken; the copy's log ends
    // at most a few entries (those in flight) beyond it.
    let at_copy = applied(&c, leader);
    for (kind, id) in backups {
        let name = Cluster::cert_name(kind, id);
        c.kill9(&name);
        copy_dir(&c.cluster.replica_dir(kind, id), &copies.path().join(&name));
        restart(&mut c, kind, id);
    }
    wait_for_calls(ledger, 1000).await;
    // The copied replica takes part again: it applies (so holds and acknowledged) entries
    // well beyond the copy's end before the copy goes back. A replica that restarted too
    // slowly to acknowledge anything new would lose nothing with the copy, and no check
    // could tell (nor need to).
    const BEYOND: u64 = 50;
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(&c, copied) <= at_copy + BEYOND {
        assert!(
            Instant::now() < deadline,
            "product-db-{copied} applied nothing new after its restart: {:?}",
            c.status()
        );
        sleep_ms(100).await;
    }
    for (kind, id) in backups {
        let name = Cluster::cert_name(kind, id);
        let dir = c.cluster.replica_dir(kind, id);
        c.kill9(&name);
        empty_dir(&dir).await;
        std::fs::remove_dir(&dir).expect("remove the emptied directory");
        copy_dir(&copies.path().join(&name), &dir);
        restart(&mut c, kind, id);
    }
    wait_for_calls(ledger, 1000).await;
    for (kind, id) in [(RoleKind::CustomerDb, 3), (RoleKind::ProductDb, follower)] {
        let name = Cluster::cert_name(kind, id);
        c.kill9(&name);
        empty_dir(&c.cluster.replica_dir(kind, id)).await;
        restart(&mut c, kind, id);
        wait_for_calls(ledger, 1000).await;
    }
    let ledger = load.finish().await;
    assert!(
        ledger.failures.is_empty(),
        "failed calls: {:?}",
        ledger.failures
    );
    verify(&c, &accounts, &ledger, true).await;
    // They reach the others once the load has stopped, and the product-db replicas vote
    // again (followers or the leader, no longer recovering).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.status();
        let applied = |name: &str| status.get(name).map(|r| r.2);
        let reached = |role: &str, id: u64| {
            (0..5).filter(|i| *i != id).all(|i| {
                applied(&format!("{role}-{id}"))
                    .zip(applied(&format!("{role}-{i}")))
                    .is_some_and(|(mine, theirs)| mine >= theirs && theirs > 0)
            })
        };
        let voting = |id: u64| {
            status
                .get(&format!("product-db-{id}"))
                .is_some_and(|r| r.0 == "follower" || r.0 == "leader")
        };
        if reached("customer-db", 3)
            && reached("customer-db", 1)
            && reached("product-db", follower)
            && reached("product-db", copied)
            && voting(follower)
            && voting(copied)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the emptied replicas did not catch up: {status:?}"
        );
        sleep_ms(300).await;
    }
    // They knew their disks were lost (rather than starting a new history).
    let log = |name: String| {
        std::fs::read_to_string(c.dir.join("logs").join(format!("{name}.log"))).unwrap_or_default()
    };
    let customer = log("customer-db-3".into());
    assert!(
        customer.contains("rebuilding from a peer's snapshot and journal"),
        "customer-db-3 was not rebuilt:\n{customer}"
    );
    let older = log("customer-db-1".into());
    assert!(
        (older.contains("beyond the last one on disk")
            || older.contains("at or above the lease on disk"))
            && older.contains("rebuilding from a peer's snapshot and journal"),
        "customer-db-1, restarted from an older copy, was not rebuilt:\n{older}"
    );
    let product = log(format!("product-db-{follower}"));
    assert!(
        product.contains("catching up before voting"),
        "product-db-{follower} did not rejoin as an emptied replica:\n{product}"
    );
    let product = log(format!("product-db-{copied}"));
    assert!(
        product.contains("store older than what a peer saw of this node")
            && product.contains("catching up before voting"),
        "product-db-{copied}, restarted from an older copy, did not rejoin:\n{product}\nleader {leader}:\n{}",
        log(format!("product-db-{leader}"))
    );
    c.stop().await;
}
