//! Turning samples into the report: per-function statistics, throughput, failed calls, the
//! stall around each injected failure, a bucketed timeline; printed as Markdown, saved as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::load::{Func, Injection, Outcome, RunData, Sample};
use super::waits::{FrontendWaits, Wait};

/// Half-width of the window around an injection in which the longest call is the stall.
pub const STALL_WINDOW_MS: f64 = 2000.0;
/// Buckets of the timeline.
const TIMELINE_BUCKETS: u64 = 200;

/// Statistics of one function in one run.
#[derive(Debug, Clone, Serialize)]
pub struct FuncStats {
    /// API.md name.
    pub name: &'static str,
    /// "seller" or "buyer".
    pub side: &'static str,
    /// Calls made.
    pub calls: usize,
    /// Mean response time, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Longest, ms.
    pub max_ms: f64,
    /// Expected domain answers (402, 404, 409).
    pub domain_answers: usize,
    /// Failed calls.
    pub failed: usize,
}

/// The longest call around one injected failure.
#[derive(Debug, Clone, Serialize)]
pub struct Stall {
    /// The injection.
    pub what: String,
    /// When, seconds after the mix started.
    pub at_s: f64,
    /// The longest response time among mix calls (create/login/logout excluded) started
    /// within ±2 s of it, ms.
    pub max_latency_ms: f64,
    /// Which function that was.
    pub function: &'static str,
    /// The longest response time among mix calls that started and ended in the 2 s before
    /// it, for comparison, ms.
    pub before_max_ms: f64,
}

/// One bucket of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Bucket start, seconds after the mix started.
    pub t_s: f64,
    /// Calls started in it.
    pub calls: usize,
    /// Their mean response time, ms.
    pub mean_ms: f64,
    /// Their longest, ms.
    pub max_ms: f64,
}

/// One scenario run.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// 1 to 4.
    pub id: u8,
    /// Short name.
    pub name: String,
    /// Injected failures, times in seconds after the mix started.
    pub injections: Vec<InjectionReport>,
    /// The injector's error, if it could not inject.
    pub injector_error: Option<String>,
    /// Calls in the measured mix (create, login, logout excluded).
    pub mix_calls: usize,
    /// Duration of the mix, s.
    pub mix_seconds: f64,
    /// Mix calls per second, all clients together.
    pub throughput_ops_s: f64,
    /// Every call made, setup and logout included.
    pub total_calls: usize,
    /// Failed calls (all calls).
    pub failed_calls: usize,
    /// Expected domain answers (all calls).
    pub domain_answers: usize,
    /// The first failed calls, described.
    pub failures: Vec<String>,
    /// The stall around each injection.
    pub stalls: Vec<Stall>,
    /// Per function, sellers' then buyers'.
    pub functions: Vec<FuncStats>,
    /// Response time over the mix.
    pub timeline: Vec<Bucket>,
    /// What the frontends waited for (`waits`), if their `/metrics` answered.
    pub frontend_waits: Option<FrontendWaits>,
}

/// An injection, relative to the mix start.
#[derive(Debug, Clone, Serialize)]
pub struct InjectionReport {
    /// What was done.
    pub what: String,
    /// Victim process.
    pub victim: String,
    /// Its pid.
    pub pid: u32,
    /// Seconds after the mix started.
    pub at_s: f64,
    /// For a leader kill: ms until `market status` showed a new leader (upper bound).
    pub new_leader_after_ms: Option<f64>,
    /// How long that status query took, ms.
    pub status_query_ms: Option<f64>,
    /// For a restarted replica: ms until `market status` showed it caught up (upper bound).
    pub back_after_ms: Option<f64>,
}

/// One load level, every scenario.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// Concurrent sellers.
    pub sellers: usize,
    /// Concurrent buyers.
    pub buyers: usize,
    /// Mix calls per client.
    pub calls_per_client: u64,
    /// The scenarios run.
    pub scenarios: Vec<ScenarioResult>,
}

/// The machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
}

/// The Argon2id parameters and measured cost of one hash.
#[derive(Debug, Clone, Serialize)]
pub struct Argon2Cost {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// Median time of one hash in this process, ms.
    pub hash_ms: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// `--quick`.
    pub quick: bool,
    /// The machine.
    pub machine: Machine,
    /// Argon2id cost.
    pub argon2: Argon2Cost,
    /// Every load level.
    pub loads: Vec<LoadResult>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentile `q` (0..=1) of sorted values, nearest rank.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn func_stats(samples: &[Sample], func: Func, side: &'static str) -> FuncStats {
    let mut lat: Vec<u64> = samples
        .iter()
        .filter(|s| s.func == func)
        .map(|s| s.latency_us)
        .collect();
    lat.sort_unstable();
    let count = |o: Outcome| {
        samples
            .iter()
            .filter(|s| s.func == func && s.outcome == o)
            .count()
    };
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0
    };
    FuncStats {
        name: func.name(),
        side,
        calls: lat.len(),
        mean_ms: mean,
        p50_ms: ms(percentile(&lat, 0.5)),
        p99_ms: ms(percentile(&lat, 0.99)),
        max_ms: ms(lat.last().copied().unwrap_or(0)),
        domain_answers: count(Outcome::Domain),
        failed: count(Outcome::Failed),
    }
}

/// Summarizes one run.
pub fn summarize(id: u8, name: &str, data: &RunData) -> ScenarioResult {
    let s = &data.samples;
    let in_mix = |x: &&Sample| !is_session(x.func);
    let mix_calls = s.iter().filter(in_mix).count();
    let mix_seconds = (data.mix_end_us.saturating_sub(data.mix_start_us)) as f64 / 1e6;
    let rel_s = |us: f64| (us - data.mix_start_us as f64) / 1e6;
    let mut functions = Vec::new();
    for f in Func::SELLER {
        functions.push(func_stats(s, f, "seller"));
    }
    for f in Func::BUYER {
        functions.push(func_stats(s, f, "buyer"));
    }
    let stalls = data
        .injections
        .iter()
        .map(|inj| stall(s, inj, data.mix_start_us))
        .collect();
    let injections = data
        .injections
        .iter()
        .map(|i| InjectionReport {
            what: i.what.clone(),
            victim: i.victim.clone(),
            pid: i.pid,
            at_s: rel_s(i.at_ms * 1000.0),
            new_leader_after_ms: i.new_leader_after_ms,
            status_query_ms: i.status_query_ms,
            back_after_ms: i.back_after_ms,
        })
        .collect();
    ScenarioResult {
        id,
        name: name.to_string(),
        injections,
        injector_error: data.injector_error.clone(),
        mix_calls,
        mix_seconds,
        throughput_ops_s: if mix_seconds > 0.0 {
            mix_calls as f64 / mix_seconds
        } else {
            0.0
        },
        total_calls: s.len(),
        failed_calls: s.iter().filter(|x| x.outcome == Outcome::Failed).count(),
        domain_answers: s.iter().filter(|x| x.outcome == Outcome::Domain).count(),
        failures: data.failures.clone(),
        stalls,
        functions,
        timeline: timeline(s, data.mix_start_us, data.mix_end_us),
        frontend_waits: data.frontend_waits,
    }
}

/// create, login and logout: once per client session, outside the measured mix.
fn is_session(f: Func) -> bool {
    matches!(
        f,
        Func::CreateSeller
            | Func::LoginSeller
            | Func::LogoutSeller
            | Func::CreateBuyer
            | Func::LoginBuyer
            | Func::LogoutBuyer
    )
}

fn stall(samples: &[Sample], inj: &Injection, mix_start_us: u64) -> Stall {
    let at_us = inj.at_ms * 1000.0;
    let window = STALL_WINDOW_MS * 1000.0;
    let mut worst: Option<&Sample> = None;
    let mut before = 0u64;
    for s in samples.iter().filter(|s| !is_session(s.func)) {
        let t = s.start_us as f64;
        if (t - at_us).abs() <= window && worst.is_none_or(|w| s.latency_us > w.latency_us) {
            worst = Some(s);
        }
        if t >= at_us - window && t + (s.latency_us as f64) < at_us {
            before = before.max(s.latency_us);
        }
    }
    Stall {
        what: inj.what.clone(),
        at_s: (at_us - mix_start_us as f64) / 1e6,
        max_latency_ms: worst.map_or(0.0, |w| ms(w.latency_us)),
        function: worst.map_or("-", |w| w.func.name()),
        before_max_ms: ms(before),
    }
}

fn timeline(samples: &[Sample], start_us: u64, end_us: u64) -> Vec<Bucket> {
    let span = end_us.saturating_sub(start_us).max(1);
    let width = (span / TIMELINE_BUCKETS).max(10_000);
    let n = span.div_ceil(width) as usize;
    let mut sums = vec![(0usize, 0u64, 0u64); n];
    for s in samples {
        if s.start_us < start_us || s.start_us >= end_us {
            continue;
        }
        let b = (((s.start_us - start_us) / width) as usize).min(n - 1);
        sums[b].0 += 1;
        sums[b].1 += s.latency_us;
        sums[b].2 = sums[b].2.max(s.latency_us);
    }
    sums.into_iter()
        .enumerate()
        .map(|(i, (calls, sum, max))| Bucket {
            t_s: (i as u64 * width) as f64 / 1e6,
            calls,
            mean_ms: if calls == 0 {
                0.0
            } else {
                sum as f64 / calls as f64 / 1000.0
            },
            max_ms: ms(max),
        })
        .collect()
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(f: &FuncStats) -> String {
    if f.calls == 0 {
        "-".into()
    } else {
        format!("{} ({} / {})", num(f.mean_ms), num(f.p50_ms), num(f.p99_ms))
    }
}

/// The Markdown of the whole report.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let a = &report.argon2;
    let _ = writeln!(
        out,
        "Machine: {} logical CPUs, {}. Command: `{}`. Started {}.\n",
        report.machine.nproc, report.machine.cpu_model, report.command, report.started
    );
    let _ = writeln!(
        out,
        "Argon2id parameters: m = {} KiB, t = {}, p = {}; one hash takes {:.1} ms in-process \
         (create_* hashes once, login_* verifies once).\n",
        a.m_cost_kib, a.t_cost, a.p_cost, a.hash_ms
    );
    let _ = writeln!(
        out,
        "Cells: mean (p50 / p99) response time in ms, measured by the client over HTTP. \
         create/login/logout run once per client per session; every other function is part \
         of the measured mix.\n"
    );
    for load in &report.loads {
        let _ = writeln!(
            out,
            "### {} seller{} + {} buyer{} ({} mix calls per client)\n",
            load.sellers,
            if load.sellers == 1 { "" } else { "s" },
            load.buyers,
            if load.buyers == 1 { "" } else { "s" },
            load.calls_per_client
        );
        for side in ["seller", "buyer"] {
            let _ = write!(out, "| {side} function |");
            for sc in &load.scenarios {
                let _ = write!(out, " {}. {} |", sc.id, sc.name);
            }
            let _ = write!(out, "\n|---|");
            for _ in &load.scenarios {
                let _ = write!(out, "---|");
            }
            out.push('\n');
            let Some(first) = load.scenarios.first() else {
                continue;
            };
            for (i, f) in first.functions.iter().enumerate() {
                if f.side != side {
                    continue;
                }
                let _ = write!(out, "| {} |", f.name);
                for sc in &load.scenarios {
                    let _ = write!(out, " {} |", cell(&sc.functions[i]));
                }
                out.push('\n');
            }
            out.push('\n');
        }
        let _ = write!(out, "| | ");
        for sc in &load.scenarios {
            let _ = write!(out, "{}. {} | ", sc.id, sc.name);
        }
        let _ = write!(out, "\n|---|");
        for _ in &load.scenarios {
            let _ = write!(out, "---|");
        }
        out.push('\n');
        let row = |out: &mut String, label: &str, f: &dyn Fn(&ScenarioResult) -> String| {
            let _ = write!(out, "| {label} |");
            for sc in &load.scenarios {
                let _ = write!(out, " {} |", f(sc));
            }
            out.push('\n');
        };
        row(&mut out, "throughput (mix calls/s)", &|s| {
            format!("{:.0}", s.throughput_ops_s)
        });
        row(&mut out, "mix calls / duration", &|s| {
            format!("{} / {:.1} s", s.mix_calls, s.mix_seconds)
        });
        row(&mut out, "failed calls", &|s| s.failed_calls.to_string());
        row(&mut out, "domain answers (402/404/409)", &|s| {
            s.domain_answers.to_string()
        });
        row(&mut out, "failure injected at", &|s| {
            if let Some(e) = &s.injector_error {
                return format!("injection failed: {e}");
            }
            if s.injections.is_empty() {
                return "-".into();
            }
            s.injections
                .iter()
                .map(|i| {
                    let elected = i
                        .new_leader_after_ms
                        .map(|m| {
                            format!(
                                ", new leader in `market status` by {m:.0} ms (query took {:.0} ms)",
                                i.status_query_ms.unwrap_or(0.0)
                            )
                        })
                        .unwrap_or_default();
                    let back = i
                        .back_after_ms
                        .map(|m| format!(", started again, caught up by {m:.0} ms"))
                        .unwrap_or_default();
                    format!("{} at {:.2} s{elected}{back}", i.victim, i.at_s)
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        let waited = |s: &ScenarioResult, pick: &dyn Fn(&FrontendWaits) -> String| {
            s.frontend_waits.as_ref().map_or_else(|| "-".into(), pick)
        };
        let mean = |w: &Wait| {
            if w.calls == 0 {
                "-".to_string()
            } else {
                num(w.mean_ms)
            }
        };
        type Pick = fn(&FrontendWaits) -> (Wait, Wait);
        let dbs: [(&str, Pick); 2] = [
            ("customer-db", |w| (w.customer_write, w.customer_read)),
            ("product-db", |w| (w.product_write, w.product_read)),
        ];
        for (db, pick) in dbs {
            let label = format!("frontends waited, {db} write / read (mean ms)");
            row(&mut out, &label, &|s| {
                waited(s, &|w| {
                    let (write, read) = pick(w);
                    format!("{} / {}", mean(&write), mean(&read))
                })
            });
        }
        row(
            &mut out,
            "frontends waited, payment service (mean ms)",
            &|s| waited(s, &|w| mean(&w.payment)),
        );
        row(&mut out, "longest call within ±2 s of it", &|s| {
            if s.stalls.is_empty() {
                return "-".into();
            }
            let worst = s
                .stalls
                .iter()
                .max_by(|a, b| a.max_latency_ms.total_cmp(&b.max_latency_ms))
                .expect("not empty");
            format!(
                "{} ms ({}; 2 s before: {} ms)",
                num(worst.max_latency_ms),
                worst.function,
                num(worst.before_max_ms)
            )
        });
        out.push('\n');
        for sc in &load.scenarios {
            if !sc.failures.is_empty() {
                let _ = writeln!(out, "Failed calls in scenario {} (first ones):\n", sc.id);
                for f in &sc.failures {
                    let _ = writeln!(out, "- {f}");
                }
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn summary_counts_and_stall() {
        let mk = |func, start_ms: u64, lat_ms: u64, outcome| Sample {
            func,
            start_us: start_ms * 1000,
            latency_us: lat_ms * 1000,
            outcome,
        };
        let data = RunData {
            samples: vec![
                mk(Func::LoginSeller, 0, 30, Outcome::Ok),
                mk(Func::AddItem, 100, 2, Outcome::Ok),
                mk(Func::ChangePrice, 1000, 4, Outcome::Ok),
                mk(Func::MakePurchase, 3000, 300, Outcome::Domain),
                mk(Func::GetItem, 9000, 900, Outcome::Failed),
            ],
            mix_start_us: 100_000,
            mix_end_us: 10_100_000,
            injections: vec![Injection {
                what: "kill".into(),
                victim: "seller-0".into(),
                pid: 1,
                at_ms: 2500.0,
                new_leader_after_ms: None,
                status_query_ms: None,
                back_after_ms: None,
            }],
            ..RunData::default()
        };
        let r = summarize(2, "x", &data);
        assert_eq!(r.mix_calls, 4);
        assert_eq!(r.failed_calls, 1);
        assert_eq!(r.domain_answers, 1);
        assert!((r.throughput_ops_s - 0.4).abs() < 1e-9);
        assert_eq!(r.stalls[0].max_latency_ms, 300.0);
        assert_eq!(r.stalls[0].before_max_ms, 4.0);
        assert!((r.injections[0].at_s - 2.4).abs() < 1e-9);
        let md = markdown(&Report {
            command: "c".into(),
            started: "now".into(),
            quick: true,
            machine: Machine {
                nproc: 2,
                cpu_model: "cpu".into(),
            },
            argon2: Argon2Cost {
                m_cost_kib: 1,
                t_cost: 1,
                p_cost: 1,
                hash_ms: 1.0,
            },
            loads: vec![LoadResult {
                sellers: 1,
                buyers: 1,
                calls_per_client: 2,
                scenarios: vec![r],
            }],
        });
        assert!(md.contains("| add_item | 2.00 (2.00 / 2.00) |"), "{md}");
    }
}
