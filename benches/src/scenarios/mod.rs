//! The scenario benchmark: the seed's response-time table, measured on a real cluster.
//!
//! `benches scenarios [--quick] [--out DIR]` (run it as
//! `cargo run --release -p benches -- scenarios`):
//!
//! 1. finds the `market` binary next to this executable ([`cluster::find_market`]);
//! 2. for every load level (1+1, 10+10, 100+100 concurrent sellers + buyers; `--quick`: 2+2)
//!    and every scenario, starts a fresh reference cluster with `market up` in a temporary
//!    directory on a free block of loopback ports ([`cluster::Cluster`]);
//! 3. drives it with closed-loop seller and buyer clients over HTTP ([`load`]), and when half
//!    of the mix's calls are done injects the scenario's failure:
//!    1. no failure;
//!    2. kill -9 `seller-0` and `buyer-0` (client `i` starts on replica `i mod 4`, so both
//!       have clients connected);
//!    3. kill -9 a product-db follower (the lowest id that `market status` calls a follower);
//!    4. kill -9 the product-db leader (as `market status` reports it), then polls `market
//!       status` until another replica leads and records how long that took;
//!    5. (beyond the seed's four; not in the default set) with `market up
//!       --restart-crashed`, kill -9 `customer-db-0`, which the supervisor starts again at
//!       once: the others exclude it from the atomic broadcast's ring (a reformation) and
//!       readmit it once it is back (README, "Failure model"), so this measures how long the
//!       customer database stalls around a member's crash and restart; polls `market
//!       status` until the member has caught up with the others and records how long that
//!       took;
//!    6. (also on request) a lost disk: kill -9 `customer-db-0`, empty its data directory and
//!       start it again (`market node customer-db --id 0`): it learns from its peers that
//!       it had a history, copies a peer's snapshot and journal, and rejoins (the ring waits
//!       meanwhile); records how long until it has caught up, as in 5;
//!    7. (also on request) a product-db follower's disk lost: kill -9 it, empty its data
//!       directory, start it again: it follows the leader and catches up before it votes;
//!       records how long until `market status` calls it a follower again (voting);
//!    8. (also on request) kill -9 `customer-db-0` and leave it down: the others exclude it
//!       and go on (a host lost for good);
//! 4. prints the Markdown tables, writes `report.json`, `report.md` and SVG charts
//!    ([`charts`]) into `--out` (default `target/scenarios/`).
//!
//! Failed calls are transport errors, timeouts, 5xx, 401 and any status other than the
//! expected domain answers 402 / 404 / 409; the benchmark exits with status 1 when there are
//! any, so CI notices. It makes no timing assertion.

mod charts;
mod cluster;
mod load;
mod report;
mod waits;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

use self::cluster::{Cluster, Handle};
use self::load::{Injection, Injector, LoadSpec};
use self::report::{Argon2Cost, LoadResult, Machine, Report};

#[derive(Parser, Debug)]
#[command(
    name = "benches scenarios",
    about = "The scenario benchmark: response times of every client function on a real cluster, \
             with and without failures"
)]
struct Args {
    /// Small load (2 sellers + 2 buyers), short run, all four scenarios: for CI.
    #[arg(long)]
    quick: bool,
    /// Where to write report.json, report.md and the SVG charts (default: target/scenarios).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `market` binary (default: next to this executable).
    #[arg(long)]
    market: Option<PathBuf>,
    /// Load levels: clients per side, comma-separated (default 1,10,100; --quick: 2).
    #[arg(long, value_delimiter = ',')]
    loads: Vec<usize>,
    /// Mix calls per client (default: by load level, see `calls_for`).
    #[arg(long)]
    calls: Option<u64>,
    /// Start the cluster with the product database's opt-in lease reads (`market up
    /// --lease-reads`) instead of the default ReadIndex reads.
    #[arg(long)]
    lease_reads: bool,
    /// Scenarios to run, comma-separated (default 1,2,3,4; 5 to 8 on request).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<u8>,
}

/// Scenario names, by id.
const SCENARIOS: [&str; 8] = [
    "no failure",
    "seller-0 + buyer-0 killed",
    "product-db follower killed",
    "product-db leader killed",
    "customer-db-0 killed, restarted",
    "customer-db-0's disk lost",
    "product-db follower's disk lost",
    "customer-db-0 killed, left down",
];

/// Mix calls per client at a load level: about 4,000 to 60,000 calls per run, so the whole
/// matrix stays within a few minutes on a 2-core machine.
fn calls_for(clients_per_side: usize, quick: bool) -> u64 {
    if quick {
        return 150;
    }
    match clients_per_side {
        0..=1 => 2000,
        2..=10 => 1000,
        _ => 300,
    }
}

/// Entry point of `benches scenarios ARGS…`.
pub fn main(args: &[String]) -> Result<(), String> {
    let args = Args::try_parse_from(
        std::iter::once("benches scenarios".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| e.to_string())?;
    let market = cluster::find_market(args.market.as_deref())?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => default_out(),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let loads = if !args.loads.is_empty() {
        args.loads.clone()
    } else if args.quick {
        vec![2]
    } else {
        vec![1, 10, 100]
    };
    let scenarios: Vec<u8> = if args.scenarios.is_empty() {
        vec![1, 2, 3, 4]
    } else {
        args.scenarios.clone()
    };
    if let Some(bad) = scenarios.iter().find(|s| !(1..=8).contains(*s)) {
        return Err(format!("no scenario {bad} (1 to 8)"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let started_at = Instant::now();
    let mut report = Report {
        command: std::iter::once("benches".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        started: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        quick: args.quick,
        machine: machine(),
        argon2: argon2_cost(),
        loads: Vec::new(),
    };
    eprintln!(
        "argon2id m={} KiB t={} p={}: {:.1} ms per hash",
        report.argon2.m_cost_kib, report.argon2.t_cost, report.argon2.p_cost, report.argon2.hash_ms
    );
    for &per_side in &loads {
        let spec = LoadSpec {
            sellers: per_side,
            buyers: per_side,
            calls_per_client: args
                .calls
                .unwrap_or_else(|| calls_for(per_side, args.quick)),
            mix_time_max: if args.quick {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(90)
            },
        };
        let mut result = LoadResult {
            sellers: spec.sellers,
            buyers: spec.buyers,
            calls_per_client: spec.calls_per_client,
            scenarios: Vec::new(),
        };
        for &id in &scenarios {
            let name = SCENARIOS[id as usize - 1];
            eprint!("{per_side}+{per_side} clients, scenario {id} ({name}): ");
            let mut cluster = Cluster::start(&market, args.lease_reads, id == 5)?;
            let injector = injector(id, cluster.handle());
            let data = runtime.block_on(load::run(
                spec,
                &cluster.file.seller_servers,
                &cluster.file.buyer_servers,
                injector,
            ));
            cluster.stop();
            let data = data?;
            let summary = report::summarize(id, name, &data);
            eprintln!(
                "{} mix calls in {:.1} s, {:.0} calls/s, {} failed{}",
                summary.mix_calls,
                summary.mix_seconds,
                summary.throughput_ops_s,
                summary.failed_calls,
                summary
                    .stalls
                    .iter()
                    .map(|s| format!(
                        ", longest call ±2 s around the {} {:.1} ms",
                        s.what, s.max_latency_ms
                    ))
                    .collect::<String>()
            );
            if let Some(e) = &summary.injector_error {
                eprintln!("  injection failed: {e}");
            }
            result.scenarios.push(summary);
        }
        for path in charts::write(&result, &out).map_err(|e| format!("charts: {e}"))? {
            eprintln!("wrote {}", path.display());
        }
        report.loads.push(result);
    }
    let md = report::markdown(&report);
    print!("{md}");
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    for (name, text) in [("report.json", json.as_str()), ("report.md", md.as_str())] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    eprintln!("done in {:.0} s", started_at.elapsed().as_secs_f64());
    let failed: usize = report
        .loads
        .iter()
        .flat_map(|l| &l.scenarios)
        .map(|s| s.failed_calls)
        .sum();
    let injection_errors = report
        .loads
        .iter()
        .flat_map(|l| &l.scenarios)
        .filter(|s| s.injector_error.is_some())
        .count();
    if failed > 0 || injection_errors > 0 {
        return Err(format!(
            "{failed} failed calls, {injection_errors} failed injections"
        ));
    }
    Ok(())
}

/// `target/scenarios` next to the `release`/`debug` directory this executable is in.
fn default_out() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("scenarios")))
        .unwrap_or_else(|| PathBuf::from("target/scenarios"))
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
    }
}

/// Times the production Argon2id hash in this process (median of 5).
fn argon2_cost() -> Argon2Cost {
    use marketcore::password::{hash, random_salt, PasswordParams};
    let params = PasswordParams::PRODUCTION;
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let salt = random_salt();
            let t = Instant::now();
            let _ = hash("scenario-bench-pw", &salt, params);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Argon2Cost {
        m_cost_kib: params.m_cost_kib,
        t_cost: params.t_cost,
        p_cost: params.p_cost,
        hash_ms: times[times.len() / 2],
    }
}

fn since_ms(origin: Instant) -> f64 {
    origin.elapsed().as_secs_f64() * 1e3
}

/// Polls `market status` until customer-db member `id` is up and at least where the slowest
/// other member was one poll before (30 s at most); ms since `since`.
fn caught_up_after(handle: &Handle, id: u64, since: Instant) -> Option<f64> {
    let mut others_before: Option<u64> = None;
    while since.elapsed() < Duration::from_secs(30) {
        let applied = handle.customer_db_applied().unwrap_or_default();
        let mine = applied.iter().find(|(m, _)| *m == id).map(|(_, a)| *a);
        if let (Some(mine), Some(before)) = (mine, others_before) {
            if mine >= before {
                return Some(since_ms(since));
            }
        }
        others_before = applied
            .iter()
            .filter(|(m, _)| *m != id)
            .map(|(_, a)| *a)
            .min()
            .or(others_before);
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The lowest product-db id that `market status` calls a follower.
fn some_follower(handle: &Handle) -> Result<u64, String> {
    let roles = handle.product_db_roles()?;
    roles
        .iter()
        .find(|(_, r)| r == "follower")
        .map(|(id, _)| *id)
        .ok_or_else(|| format!("no product-db follower in {roles:?}"))
}

/// The failure injection of scenario `id`.
fn injector(id: u8, handle: Handle) -> Option<Injector> {
    let kill = |handle: &Handle, what: &str, victim: String, origin: Instant| {
        let pid = handle.kill9(&victim)?;
        Ok::<_, String>(Injection {
            what: what.to_string(),
            victim,
            pid,
            at_ms: since_ms(origin),
            new_leader_after_ms: None,
            status_query_ms: None,
            back_after_ms: None,
        })
    };
    match id {
        2 => Some(Box::new(move |origin| {
            Ok(vec![
                kill(&handle, "kill -9 seller server", "seller-0".into(), origin)?,
                kill(&handle, "kill -9 buyer server", "buyer-0".into(), origin)?,
            ])
        })),
        3 => Some(Box::new(move |origin| {
            let follower = some_follower(&handle)?;
            Ok(vec![kill(
                &handle,
                "kill -9 product-db follower",
                format!("product-db-{follower}"),
                origin,
            )?])
        })),
        4 => Some(Box::new(move |origin| {
            let leader = handle.product_db_leader(Duration::from_secs(5))?;
            let mut inj = kill(
                &handle,
                "kill -9 product-db leader",
                format!("product-db-{leader}"),
                origin,
            )?;
            let killed = Instant::now();
            while killed.elapsed() < Duration::from_secs(10) {
                let query = Instant::now();
                let roles = handle.product_db_roles().unwrap_or_default();
                if roles.iter().any(|(id, r)| r == "leader" && *id != leader) {
                    inj.new_leader_after_ms = Some(since_ms(killed));
                    inj.status_query_ms = Some(since_ms(query));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(vec![inj])
        })),
        5 => Some(Box::new(move |origin| {
            let mut inj = kill(
                &handle,
                "kill -9 customer-db member (market up restarts it)",
                "customer-db-0".into(),
                origin,
            )?;
            let killed = Instant::now();
            inj.back_after_ms = caught_up_after(&handle, 0, killed);
            Ok(vec![inj])
        })),
        6 => Some(Box::new(move |origin| {
            let mut inj = kill(
                &handle,
                "kill -9 customer-db member, its data directory emptied, started again",
                "customer-db-0".into(),
                origin,
            )?;
            let killed = Instant::now();
            handle.restart_emptied("customer-db", 0, inj.pid)?;
            inj.back_after_ms = caught_up_after(&handle, 0, killed);
            Ok(vec![inj])
        })),
        7 => Some(Box::new(move |origin| {
            let follower = some_follower(&handle)?;
            let name = format!("product-db-{follower}");
            let mut inj = kill(
                &handle,
                "kill -9 product-db follower, its data directory emptied, started again",
                name.clone(),
                origin,
            )?;
            let killed = Instant::now();
            handle.restart_emptied("product-db", follower, inj.pid)?;
            // Only the new process can answer for it now: a follower again means it votes.
            while killed.elapsed() < Duration::from_secs(30) {
                let roles = handle.product_db_roles().unwrap_or_default();
                if roles
                    .iter()
                    .any(|(id, r)| *id == follower && r == "follower")
                {
                    inj.back_after_ms = Some(since_ms(killed));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(vec![inj])
        })),
        8 => Some(Box::new(move |origin| {
            Ok(vec![kill(
                &handle,
                "kill -9 customer-db member (left down)",
                "customer-db-0".into(),
                origin,
            )?])
        })),
        _ => None,
    }
}
