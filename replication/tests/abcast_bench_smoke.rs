//! Compiles and runs `benches/src/abcast_bench.rs` on a tiny workload (the bench crate's
//! binary is where it really runs). `ABCAST_BENCH=1` runs the default (full) workload and
//! prints it.

#[path = "../../benches/src/sim_bench.rs"]
mod sim_bench;

#[path = "../../benches/src/abcast_bench.rs"]
#[allow(dead_code)]
mod abcast_bench;

#[test]
fn abcast_bench_runs() {
    let opts = if std::env::var("ABCAST_BENCH").is_ok() {
        abcast_bench::AbcastBenchOpts::default()
    } else {
        abcast_bench::AbcastBenchOpts {
            latency_ops: 20,
            clients: 8,
            ops_per_client: 10,
            ..Default::default()
        }
    };
    let report = abcast_bench::run(opts).expect("bench");
    eprintln!("{report}");
    assert!(report.throughput_ops_per_s > 0.0);
}
