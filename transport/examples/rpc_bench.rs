//! Runs the two-process RPC benchmark of `benches/src/rpc.rs` without building the whole
//! `benches` crate: `cargo run --release -p transport --example rpc_bench -- [ct] [mt]
//! [requests=N] [throughput=N] [inflight=N] [payload=N]`.

#[path = "../../benches/src/rpc.rs"]
mod rpc;

fn main() {
    if let Some(result) = rpc::maybe_server_role() {
        if let Err(e) = result {
            eprintln!("rpc bench server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut opts = rpc::RpcBenchOpts::default();
    let mut runtimes = Vec::new();
    for arg in std::env::args().skip(1) {
        let num = |v: &str| {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("bad number in {arg:?}"))
        };
        match arg.split_once('=') {
            Some(("requests", v)) => opts.requests = num(v),
            Some(("throughput", v)) => opts.throughput_requests = num(v),
            Some(("inflight", v)) => opts.inflight = num(v),
            Some(("payload", v)) => opts.payload_bytes = num(v),
            Some(("warmup", v)) => opts.warmup = num(v),
            None if arg == "ct" => runtimes.push(rpc::RuntimeKind::CurrentThread),
            None if arg == "mt" => runtimes.push(rpc::RuntimeKind::MultiThread),
            _ => {
                eprintln!("unknown argument {arg:?}");
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
