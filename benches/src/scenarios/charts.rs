//! SVG charts (plotters): per load level, the response time over the run with each injected
//! failure marked, and per-function mean response time by scenario.

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::report::{Bucket, LoadResult};

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
];

/// Writes `timeline-<s>x<b>.svg` and `functions-<s>x<b>.svg` into `dir`; returns their paths.
pub fn write(load: &LoadResult, dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let tag = format!("{}x{}", load.sellers, load.buyers);
    let timeline = dir.join(format!("timeline-{tag}.svg"));
    let functions = dir.join(format!("functions-{tag}.svg"));
    draw_timeline(load, &timeline)?;
    draw_functions(load, &functions)?;
    Ok(vec![timeline, functions])
}

fn draw_timeline(load: &LoadResult, path: &Path) -> Result<(), Box<dyn Error>> {
    let n = load.scenarios.len().max(1);
    let root = SVGBackend::new(path, (1000, 260 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((n, 1));
    for (panel, sc) in panels.iter().zip(&load.scenarios) {
        let x_max = sc
            .timeline
            .last()
            .map_or(1.0, |b| b.t_s)
            .max(sc.mix_seconds)
            .max(0.1);
        let y_max = sc.timeline.iter().map(|b| b.max_ms).fold(1.0f64, f64::max) * 2.0;
        let y_min = 0.1f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{} sellers + {} buyers, scenario {}: {} (calls by start time, {} ms buckets)",
                    load.sellers,
                    load.buyers,
                    sc.id,
                    sc.name,
                    bucket_ms(sc)
                ),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the mix started")
            .y_desc("response time (ms)")
            .draw()?;
        // One polyline per run of buckets in which calls started: a stall shows as a gap
        // (no call started) ended by the stalled calls' point.
        let runs = |f: fn(&Bucket) -> f64| -> Vec<Vec<(f64, f64)>> {
            let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for b in &sc.timeline {
                if b.calls == 0 {
                    if runs.last().is_some_and(|r| !r.is_empty()) {
                        runs.push(Vec::new());
                    }
                } else if let Some(r) = runs.last_mut() {
                    r.push((b.t_s, f(b).max(y_min)));
                }
            }
            runs
        };
        for (k, run) in runs(|b| b.max_ms).into_iter().enumerate() {
            let series =
                chart.draw_series(LineSeries::new(run, COLORS[3].mix(0.6)).point_size(1))?;
            if k == 0 {
                series
                    .label("max per bucket")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], COLORS[3]));
            }
        }
        for (k, run) in runs(|b| b.mean_ms).into_iter().enumerate() {
            let series =
                chart.draw_series(LineSeries::new(run, COLORS[0].stroke_width(2)).point_size(1))?;
            if k == 0 {
                series
                    .label("mean per bucket")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], COLORS[0]));
            }
        }
        for inj in &sc.injections {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(inj.at_s, y_min), (inj.at_s, y_max)],
                    BLACK.stroke_width(2),
                )))?
                .label(format!("kill -9 {} at {:.2} s", inj.victim, inj.at_s))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn draw_functions(load: &LoadResult, path: &Path) -> Result<(), Box<dyn Error>> {
    let Some(first) = load.scenarios.first() else {
        return Ok(());
    };
    let sides = ["seller", "buyer"];
    let counts: Vec<usize> = sides
        .iter()
        .map(|s| first.functions.iter().filter(|f| f.side == *s).count())
        .collect();
    let total: usize = counts.iter().sum();
    let root = SVGBackend::new(path, (1000, (40 * total + 160) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically((40 * counts[0] + 80) as u32);
    let x_max = load
        .scenarios
        .iter()
        .flat_map(|s| s.functions.iter().map(|f| f.mean_ms))
        .fold(1.0f64, f64::max)
        * 3.0;
    let x_min = 0.05f64;
    for (area, side) in [(top, sides[0]), (bottom, sides[1])] {
        let idx: Vec<usize> = first
            .functions
            .iter()
            .enumerate()
            .filter(|(_, f)| f.side == side)
            .map(|(i, _)| i)
            .collect();
        let n = idx.len();
        let names: Vec<&str> = idx.iter().map(|&i| first.functions[i].name).collect();
        let label = |y: &f64| -> String {
            let r = y.round();
            if (y - r).abs() < 0.05 && r >= 0.0 && (r as usize) < names.len() {
                names[names.len() - 1 - r as usize].to_string()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "{} functions, {} sellers + {} buyers: mean response time by scenario",
                    side, load.sellers, load.buyers
                ),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(150)
            .build_cartesian_2d((x_min..x_max).log_scale(), -0.5f64..(n as f64 - 0.5))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&label)
            .x_desc("mean response time (ms, log scale)")
            .draw()?;
        let k = load.scenarios.len().max(1) as f64;
        let band = 0.8 / k;
        for (s, sc) in load.scenarios.iter().enumerate() {
            let color = COLORS[s % COLORS.len()];
            let bars = idx.iter().enumerate().map(|(row, &i)| {
                // First function at the top.
                let y = (n - 1 - row) as f64;
                let y0 = y + 0.4 - band * (s as f64 + 1.0);
                let v = sc.functions[i].mean_ms.max(x_min);
                Rectangle::new([(x_min, y0), (v, y0 + band * 0.9)], color.filled())
            });
            chart
                .draw_series(bars)?
                .label(format!("{}. {}", sc.id, sc.name))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn bucket_ms(sc: &super::report::ScenarioResult) -> String {
    match sc.timeline.get(1) {
        Some(b) => format!("{:.0}", b.t_s * 1e3),
        None => "-".into(),
    }
}
