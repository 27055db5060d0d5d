//! Benchmarks. `rpc` (transport micro-benchmark) is wired here provisionally; the scenario
//! benchmark and a clap front end come later.

mod abcast_bench;
mod logbench;
mod raft_bench;
mod rpc;
mod scenarios;
mod sim_bench;

/// The same allocator as the `market` processes: the scenario benchmark's clients (HTTP and
/// JSON on every call) spent several percent of the machine in glibc's malloc, and the log
/// benchmark's replicas should allocate as the real ones do.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As in `market`: mimalloc's 2 MiB arenas, returned and faulted back in, cost more in page
    // zeroing than they save (see servers/src/bin/market.rs).
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    // The RPC benchmark re-executes this binary as its server process.
    if let Some(result) = rpc::maybe_server_role() {
        if let Err(e) = result {
            eprintln!("rpc bench server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("rpc") => {
            let mut opts = rpc::RpcBenchOpts::default();
            let mut runtimes = Vec::new();
            for arg in &args[1..] {
                match arg.as_str() {
                    "ct" | "current-thread" => runtimes.push(rpc::RuntimeKind::CurrentThread),
                    "mt" | "multi-thread" => runtimes.push(rpc::RuntimeKind::MultiThread),
                    other => {
                        eprintln!("unknown rpc argument {other:?} (ct | mt)");
                        std::process::exit(2);
                    }
                }
            }
            if !runtimes.is_empty() {
                opts.runtimes = runtimes;
            }
            if let Err(e) = rpc::run(opts) {
                eprintln!("rpc bench: {e}");
                std::process::exit(1);
            }
        }
        Some("logbench") => {
            if let Err(e) = logbench_main(&args[1..]) {
                eprintln!("logbench: {e}");
                std::process::exit(1);
            }
        }
        Some("scenarios") => {
            if let Err(e) = scenarios::main(&args[1..]) {
                eprintln!("scenarios: {e}");
                std::process::exit(1);
            }
        }
        _ => eprintln!("usage: benches rpc [ct] [mt]"),
    }
}

/// `logbench [raft|abcast|both|sim] [--quick] [--runtime ct|local|mt|all] [--secs S]
/// [--snapshot-every N]`.
fn logbench_main(args: &[String]) -> Result<(), String> {
    let mut opts = logbench::LogbenchOpts::default();
    let mut quick = false;
    let mut sim = false;
    let mut secs = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "raft" => opts.logs = vec![logbench::LogKind::Raft],
            "abcast" => opts.logs = vec![logbench::LogKind::Abcast],
            "both" => {}
            "sim" => sim = true,
            "--quick" => quick = true,
            "--runtime" => {
                let v = it.next().ok_or("--runtime needs ct, local, mt or all")?;
                opts.arrangements = if v == "all" {
                    vec![
                        logbench::Arrangement::PerReplica,
                        logbench::Arrangement::Colocated,
                        logbench::Arrangement::Shared,
                    ]
                } else {
                    v.split(',')
                        .map(|s| {
                            logbench::Arrangement::parse(s)
                                .ok_or_else(|| format!("unknown runtime arrangement {s:?}"))
                        })
                        .collect::<Result<_, _>>()?
                };
            }
            "--snapshot-every" => {
                let v = it.next().ok_or("--snapshot-every needs a number")?;
                let n = v
                    .parse::<u64>()
                    .map_err(|e| format!("--snapshot-every {v}: {e}"))?;
                opts.snapshot_every = Some(n.max(1));
            }
            "--secs" => {
                let v = it.next().ok_or("--secs needs a number")?;
                secs = Some(v.parse::<f64>().map_err(|e| format!("--secs {v}: {e}"))?);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: logbench [raft|abcast|both|sim] \
                     [--quick] [--runtime ct|local|mt|all] [--secs S] [--snapshot-every N]"
                ))
            }
        }
    }
    if sim {
        return logbench::run_sim(quick);
    }
    if quick {
        opts = opts.quick();
    }
    if let Some(s) = secs {
        opts.cell = std::time::Duration::from_secs_f64(s.max(0.1));
    }
    logbench::run(&opts).map(drop)
}
