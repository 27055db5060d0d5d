//! The CLI binaries against a fake seller server: the session file (0600) carries the login
//! from one invocation to the next, `--json` output, exit codes, and the scripted shell.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{dead_url, spawn, Reply};

const SELLER: &str = env!("CARGO_BIN_EXE_market-seller");
const BUYER: &str = env!("CARGO_BIN_EXE_market-buyer");

fn run<S: AsRef<std::ffi::OsStr>>(
    bin: &str,
    args: &[S],
    state: &std::path::Path,
    stdin: Option<&str>,
) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("MARKET_CLUSTER")
        .env_remove("MARKET_STATE_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn fake_seller_server() -> common::Fake {
    spawn(|s| {
        let authed = s.auth.as_deref() == Some("Bearer tok-abc");
        match (s.method.as_str(), s.path.as_str()) {
            ("POST", "/v1/sellers/sessions") => {
                Reply::json(201, r#"{"token":"tok-abc","seller_id":7}"#)
            }
            _ if !authed => Reply::problem(401, "unauthenticated", "token"),
            ("GET", "/v1/sellers/me/rating") => {
                Reply::json(200, r#"{"seller_id":7,"up":2,"down":1}"#)
            }
            ("GET", "/v1/sellers/me/items") => {
                Reply::json(200, &format!(r#"{{"items":[{}]}}"#, common::ITEM))
            }
            ("DELETE", "/v1/sellers/sessions/current") => Reply::json(204, ""),
            ("DELETE", _) => Reply::problem(409, "insufficient_quantity", "3-17"),
            _ => Reply::problem(404, "not_found", "route"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_kept_between_invocations_until_logout() {
    let server = fake_seller_server().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let url = server.url.clone();
    let srv = |extra: &[&str]| {
        let mut v = vec!["--server", url.as_str()];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };

    // Not logged in yet: exit code 3, no request needed.
    let a = srv(&["rating"]);
    let out = run(SELLER, &a, &state, None);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("unauthenticated"));

    let a = srv(&[
        "login",
        "--username",
        "sam",
        "--password",
        "password1",
        "--json",
    ]);
    let out = run(SELLER, &a, &state, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v, serde_json::json!({"token": "tok-abc", "seller_id": 7}));

    let file = state.join("seller.session.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(!state.join("buyer.session.json").exists());

    // A second invocation uses the saved token.
    let a = srv(&["rating", "--json"]);
    let out = run(SELLER, &a, &state, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"seller_id":7,"up":2,"down":1}"#);
    let last = server.seen().last().unwrap().clone();
    assert_eq!(last.auth.as_deref(), Some("Bearer tok-abc"));

    // Human output.
    let a = srv(&["items"]);
    let out = run(SELLER, &a, &state, None);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("3-17") && text.contains("12.50"), "{text}");

    // A refusal: exit 1, the problem's code and detail on stderr (JSON with --json).
    let a = srv(&["remove-item", "3-17", "--quantity", "99", "--json"]);
    let out = run(SELLER, &a, &state, None);
    assert_eq!(out.status.code(), Some(1));
    let p: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(p["code"], "insufficient_quantity");
    assert_eq!(p["detail"], "3-17");
    assert_eq!(p["status"], 409);
    assert!(stdout(&out).is_empty());
    let removed = server.seen().last().unwrap().clone();
    assert_eq!(removed.path, "/v1/sellers/me/items/3-17?quantity=99");

    let a = srv(&["logout"]);
    let out = run(SELLER, &a, &state, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!file.exists(), "logout deletes the session file");
    let a = srv(&["rating"]);
    assert_eq!(run(SELLER, &a, &state, None).status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_runs_piped_commands_and_reports_the_first_failure() {
    let server = fake_seller_server().await;
    let dir = tempfile::tempdir().unwrap();
    let script = "\
# a comment
login --username sam --password 'password1'
rating --json
remove-item 3-17
items --json
bogus-command
";
    let out = run(
        SELLER,
        &["--server", &server.url, "shell"],
        dir.path(),
        Some(script),
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "logged in as seller 7");
    assert_eq!(lines[1], r#"{"seller_id":7,"up":2,"down":1}"#);
    assert!(lines[2].starts_with(r#"{"items":[{"id":"3-17""#), "{text}");
    assert!(stderr(&out).contains("insufficient_quantity"));
    assert!(
        !stderr(&out).contains("> "),
        "no prompt when stdin is not a terminal"
    );
    assert!(dir.path().join("seller.session.json").exists());

    let out = run(
        SELLER,
        &["--server", &server.url, "shell", "--fail-fast"],
        dir.path(),
        Some("remove-item 3-17\nrating\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).is_empty(),
        "fail-fast stops at the first failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_come_from_the_cluster_file() {
    let buyer = spawn(|s| {
        assert_eq!(s.path, "/v1/sellers/7/rating");
        Reply::json(200, r#"{"seller_id":7,"up":0,"down":0}"#)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.json");
    let file = clients::ClusterFile {
        seller_servers: vec![],
        buyer_servers: vec![dead_url(), buyer.url.clone()],
        payments: None,
        processes: vec![],
    };
    file.save(&cluster).unwrap();
    let c = cluster.to_str().unwrap();
    let out = run(
        BUYER,
        &["--cluster", c, "seller-rating", "7"],
        dir.path(),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "seller 7: 0 up, 0 down\n");

    // No seller servers in the file, or no file: a local error, exit 5.
    let out = run(SELLER, &["--cluster", c, "items"], dir.path(), None);
    assert_eq!(out.status.code(), Some(5));
    let missing = dir.path().join("missing.json");
    let out = run(
        BUYER,
        &["--cluster", missing.to_str().unwrap(), "cart"],
        dir.path(),
        None,
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("--server"));

    // Nothing answers: exit 4.
    let out = run(
        BUYER,
        &[
            "--server",
            &dead_url(),
            "--timeout-ms",
            "2000",
            "item",
            "3-17",
        ],
        dir.path(),
        None,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // A usage error: exit 2.
    let out = run(BUYER, &["feedback", "3-17", "sideways"], dir.path(), None);
    assert_eq!(out.status.code(), Some(2));
}
