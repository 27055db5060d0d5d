//! The CLIs end to end against the real marketplace (seller server, buyer server, payment
//! service and both databases in one process, over real HTTP on loopback): a scripted seller
//! session and a scripted buyer session, each as separate invocations that stay logged in
//! through the session file, and as a piped `shell` script.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use servers::single::{self, SingleOptions};

const SELLER: &str = env!("CARGO_BIN_EXE_market-seller");
const BUYER: &str = env!("CARGO_BIN_EXE_market-buyer");

fn run(bin: &str, cluster: &Path, state: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin)
        .arg("--cluster")
        .arg(cluster)
        .arg("--state-dir")
        .arg(state)
        .arg("--json")
        .args(args)
        .env_remove("MARKET_CLUSTER")
        .env_remove("MARKET_STATE_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cli");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).expect("write");
    }
    drop(pipe);
    child.wait_with_output().expect("wait")
}

fn ok_json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("null")).expect("json line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_seller_and_buyer_sessions() {
    let running = single::start(SingleOptions::for_tests())
        .await
        .expect("start");
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.json");
    std::fs::write(
        &cluster,
        format!(
            r#"{{"seller_servers": ["http://{}"], "buyer_servers": ["http://{}"]}}"#,
            running.seller_addr, running.buyer_addr
        ),
    )
    .expect("cluster.json");
    let seller_state = dir.path().join("seller-state");
    let buyer_state = dir.path().join("buyer-state");
    let (c, s, b) = (cluster.clone(), seller_state.clone(), buyer_state.clone());

    let item_id = tokio::task::spawn_blocking(move || {
        // Seller: one invocation per client function.
        let created = ok_json(&run(
            SELLER,
            &c,
            &s,
            &[
                "create-account",
                "--name",
                "Sam",
                "--username",
                "sam",
                "--password",
                "correct horse",
            ],
            None,
        ));
        let seller_id = created["seller_id"].as_u64().expect("seller_id");
        ok_json(&run(
            SELLER,
            &c,
            &s,
            &["login", "--username", "sam", "--password", "correct horse"],
            None,
        ));
        let item = ok_json(&run(
            SELLER,
            &c,
            &s,
            &[
                "add-item",
                "--name",
                "desk lamp",
                "--category",
                "3",
                "--keyword",
                "led",
                "--condition",
                "new",
                "--price-cents",
                "1250",
                "--quantity",
                "4",
            ],
            None,
        ));
        let id = item["id"].as_str().expect("id").to_string();
        let priced = ok_json(&run(
            SELLER,
            &c,
            &s,
            &["change-price", &id, "--price-cents", "1000"],
            None,
        ));
        assert_eq!(priced["price_cents"], 1000);
        let removed = ok_json(&run(
            SELLER,
            &c,
            &s,
            &["remove-item", &id, "--quantity", "1"],
            None,
        ));
        assert_eq!(removed["quantity"], 3);
        let items = ok_json(&run(SELLER, &c, &s, &["items"], None));
        assert_eq!(items["items"][0]["id"], id.as_str());

        // Buyer: a piped shell script.
        let script = format!(
            "create-account --name Bea --username bea --password 'battery staple'\n\
             login --username bea --password 'battery staple'\n\
             search --keyword LED\n\
             item {id}\n\
             add-to-cart {id} --quantity 2\n\
             save-cart\n\
             cart\n\
             purchase --card-name Bea --card-number 4111111111111111 --expiry 12/39 --cvv 123\n\
             history\n\
             feedback {id} up\n\
             seller-rating {seller_id}\n"
        );
        let out = run(BUYER, &c, &b, &["shell", "--fail-fast"], Some(&script));
        assert!(
            out.status.success(),
            "shell failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 11, "one JSON line per command");
        assert_eq!(
            lines[2]["items"][0]["id"],
            id.as_str(),
            "search finds the lamp"
        );
        assert_eq!(lines[6]["saved"], true);
        assert_eq!(lines[7]["total_cents"], 2000);
        assert_eq!(lines[8]["purchases"].as_array().map(Vec::len), Some(1));
        assert_eq!(lines[10]["up"], 1);

        // The seller sees the rating; logout ends the stored session (exit code 3 afterwards).
        let rating = ok_json(&run(SELLER, &c, &s, &["rating"], None));
        assert_eq!(rating["up"], 1);
        assert!(run(SELLER, &c, &s, &["logout"], None).status.success());
        assert_eq!(run(SELLER, &c, &s, &["items"], None).status.code(), Some(3));
        // A refused request exits 1 with the problem on stderr.
        let dup = run(
            BUYER,
            &c,
            &b,
            &[
                "create-account",
                "--name",
                "Bea",
                "--username",
                "bea",
                "--password",
                "battery staple",
            ],
            None,
        );
        assert_eq!(dup.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&dup.stderr).contains("username_taken"));
        id
    })
    .await
    .expect("cli session");

    let item = running
        .market
        .market()
        .get_item(&item_id)
        .await
        .expect("item");
    assert_eq!(item.quantity, 1, "4 listed, 1 removed, 2 bought");
    running.shutdown().await;
}
