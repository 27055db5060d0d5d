//! Benchmarks. `rpc` (transport micro-benchmark) is wired here provisionally; the scenario
//! benchmark and a clap front end come later.

mod rpc;

fn main() {
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
        _ => eprintln!("usage: benches rpc [ct] [mt]"),
    }
}
