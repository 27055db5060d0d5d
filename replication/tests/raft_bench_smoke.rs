//! Compiles and runs `benches/src/raft_bench.rs` on a tiny workload (the bench crate's binary
//! is where it really runs). `RAFT_BENCH=1` runs the default (full) workload and prints it.

#[path = "../../benches/src/sim_bench.rs"]
mod sim_bench;

#[path = "../../benches/src/raft_bench.rs"]
#[allow(dead_code)]
mod raft_bench;

#[test]
fn raft_bench_runs() {
    let opts = if std::env::var("RAFT_BENCH").is_ok() {
        raft_bench::RaftBenchOpts::default()
    } else {
        raft_bench::RaftBenchOpts {
            latency_ops: 20,
            clients: 8,
            ops_per_client: 10,
            ..Default::default()
        }
    };
    let report = raft_bench::run(opts).expect("bench");
    eprintln!("{report}");
    assert!(report.throughput_ops_per_s > 0.0);
}
