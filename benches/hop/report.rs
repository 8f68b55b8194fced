//! The benchmark's results: the printed tables, `results.json` and the SVG chart.

use std::{fmt::Write as _, path::Path, time::Duration};

use serde_json::json;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Latency at a fixed rate, for one target.
pub struct Fixed {
    pub target: &'static str,
    pub samples: usize,
    /// p50, p90, p99, p99.9 in µs.
    pub percentiles_us: [f64; 4],
}

impl Fixed {
    pub fn from_sorted(target: &'static str, sorted: &[Duration]) -> Self {
        Self {
            target,
            samples: sorted.len(),
            percentiles_us: [0.5, 0.9, 0.99, 0.999].map(|p| micros(percentile(sorted, p))),
        }
    }
}

pub struct Saturation {
    pub target: String,
    pub in_flight: usize,
    pub ops_per_sec: f64,
    /// CPU time of the process in the middle (plugd, or the forwarder) per operation.
    pub hop_cpu_us_per_op: f64,
    pub component_cpu_us_per_op: f64,
}

pub struct PubSub {
    pub subscription_concurrency: usize,
    /// Messages per publish call (1: PublishEvent; more: BulkPublishEvent).
    pub batch: usize,
    pub messages: usize,
    pub publish_msgs_per_sec: f64,
    pub end_to_end_msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub struct Results {
    /// A smoke run (under `cargo test`): nothing it prints is a measurement.
    pub smoke: bool,
    pub machine: String,
    pub fixed: Vec<Fixed>,
    pub send_lateness_p50_us: f64,
    pub send_lateness_p99_us: f64,
    pub saturation: Vec<Saturation>,
    pub pubsub: Vec<PubSub>,
    pub startup_ms: Vec<(usize, f64)>,
    pub rss_idle_mib: f64,
    pub rss_load_mib: f64,
    pub rss_hwm_mib: f64,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} × {cpu}, Linux {kernel}")
}

impl Results {
    pub fn new() -> Self {
        Self {
            smoke: false,
            machine: machine(),
            fixed: Vec::new(),
            send_lateness_p50_us: 0.0,
            send_lateness_p99_us: 0.0,
            saturation: Vec::new(),
            pubsub: Vec::new(),
            startup_ms: Vec::new(),
            rss_idle_mib: 0.0,
            rss_load_mib: 0.0,
            rss_hwm_mib: 0.0,
        }
    }

    fn sat(&self, target: &str, in_flight: usize) -> Option<&Saturation> {
        self.saturation
            .iter()
            .find(|s| s.target == target && s.in_flight == in_flight)
    }

    pub fn print(&self) {
        if self.smoke {
            println!(
                "\nSmoke run (cargo test, no --bench): these figures are not measurements; \
                 run `cargo bench --bench hop`."
            );
        }
        println!("\nMachine: {}", self.machine);
        println!(
            "\nState Get, 1 KiB value, fixed rate 1000/s, latency from the scheduled send (µs):"
        );
        println!(
            "  {:<8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "target", "samples", "p50", "p90", "p99", "p99.9"
        );
        for f in &self.fixed {
            let [a, b, c, d] = f.percentiles_us;
            println!(
                "  {:<8} {:>9} {a:>9.0} {b:>9.0} {c:>9.0} {d:>9.0}",
                f.target, f.samples
            );
        }
        if let [direct, rest @ ..] = self.fixed.as_slice() {
            for f in rest {
                let r = f.percentiles_us;
                println!(
                    "  {}/direct: p50 {:.2}×  p90 {:.2}×  p99 {:.2}×  p99.9 {:.2}×",
                    f.target,
                    r[0] / direct.percentiles_us[0],
                    r[1] / direct.percentiles_us[1],
                    r[2] / direct.percentiles_us[2],
                    r[3] / direct.percentiles_us[3],
                );
            }
        }
        println!(
            "  (the sender thread itself was late by p50 {:.0} µs / p99 {:.0} µs; included above)",
            self.send_lateness_p50_us, self.send_lateness_p99_us
        );
        println!("\nState Get at saturation:");
        println!(
            "  {:<8} {:>9} {:>11} {:>8} {:>17} {:>20}",
            "target", "in flight", "ops/s", "×direct", "hop CPU µs/op", "component CPU µs/op"
        );
        for s in &self.saturation {
            let ratio = self
                .sat("direct", s.in_flight)
                .map_or(0.0, |d| s.ops_per_sec / d.ops_per_sec);
            println!(
                "  {:<8} {:>9} {:>11.0} {:>8.2} {:>17.1} {:>20.1}",
                s.target,
                s.in_flight,
                s.ops_per_sec,
                ratio,
                s.hop_cpu_us_per_op,
                s.component_cpu_us_per_op
            );
        }
        println!("\nPub/sub, publish through plugd → app received (plugd-memory, Rust gRPC app):");
        for p in &self.pubsub {
            println!(
                "  concurrency {:>3}, {}: {:>7.0} msg/s end to end ({:.0}/s published; {} messages); at 1000 msg/s latency p50 {:.2} ms, p99 {:.2} ms",
                p.subscription_concurrency,
                if p.batch > 1 {
                    format!("bulk publish of {:>3}", p.batch)
                } else {
                    "one per publish   ".into()
                },
                p.end_to_end_msgs_per_sec,
                p.publish_msgs_per_sec,
                p.messages,
                p.p50_ms,
                p.p99_ms,
            );
        }
        println!("\nStart-up until /v1.0/healthz is 204 (every component ready):");
        for (n, ms) in &self.startup_ms {
            println!("  {n:>3} sockets: {ms:.0} ms");
        }
        println!(
            "\nplugd RSS with 50 components: idle {:.1} MiB, under load {:.1} MiB (peak {:.1} MiB)",
            self.rss_idle_mib, self.rss_load_mib, self.rss_hwm_mib
        );
        if self.smoke {
            return;
        }
        println!("\nTargets:");
        for (what, figure, met) in self.targets() {
            println!(
                "  {} {what}: {figure}",
                if met { "met    " } else { "NOT met" }
            );
        }
    }

    /// Each target of the issue, with the figure of this run and whether it is met.
    pub fn targets(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for target in ["grpc", "http"] {
            for depth in [16, 64] {
                if let (Some(t), Some(d)) = (self.sat(target, depth), self.sat("direct", depth)) {
                    let ratio = t.ops_per_sec / d.ops_per_sec;
                    out.push((
                        format!("{target} throughput at {depth} in flight ≥ 0.6× direct"),
                        format!("{ratio:.2}×"),
                        ratio >= 0.6,
                    ));
                    out.push((
                        format!("plugd CPU per {target} Get at {depth} in flight ≤ 20 µs"),
                        format!("{:.1} µs", t.hop_cpu_us_per_op),
                        t.hop_cpu_us_per_op <= 20.0,
                    ));
                }
            }
        }
        if let Some(direct) = self.fixed.iter().find(|f| f.target == "direct") {
            for f in self
                .fixed
                .iter()
                .filter(|f| f.target == "grpc" || f.target == "http")
            {
                let ratio = f.percentiles_us[0] / direct.percentiles_us[0];
                out.push((
                    format!("{} p50 at 1000/s ≤ 1.8× direct", f.target),
                    format!("{ratio:.2}×"),
                    ratio <= 1.8,
                ));
            }
        }
        for bulk in [false, true] {
            if let Some(best) = self
                .pubsub
                .iter()
                .filter(|p| (p.batch > 1) == bulk)
                .map(|p| p.end_to_end_msgs_per_sec)
                .reduce(f64::max)
            {
                out.push((
                    format!(
                        "pub/sub ≥ 10,000 msg/s end to end ({})",
                        if bulk {
                            "bulk publish"
                        } else {
                            "one message per publish"
                        }
                    ),
                    format!("{best:.0} msg/s"),
                    best >= 10_000.0,
                ));
            }
        }
        if let Some((_, ms)) = self.startup_ms.iter().find(|(n, _)| *n == 100) {
            out.push((
                "100 sockets ready < 0.5 s".into(),
                format!("{ms:.0} ms"),
                *ms < 500.0,
            ));
        }
        if self.rss_idle_mib > 0.0 {
            out.push((
                "RSS idle with 50 components < 20 MB".into(),
                format!("{:.1} MiB", self.rss_idle_mib),
                self.rss_idle_mib * 1.048_576 < 20.0,
            ));
        }
        out
    }

    /// The results a run wrote to `results.json` (for `--replot`).
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64();
        let mut r = Self::new();
        r.machine = v["machine"].as_str()?.to_string();
        for x in v["fixed_rate_1000"].as_array()? {
            let target = match x["target"].as_str()? {
                "direct" => "direct",
                "grpc" => "grpc",
                "http" => "http",
                "forwarder" => "forwarder",
                _ => continue,
            };
            r.fixed.push(Fixed {
                target,
                samples: x["samples"].as_u64()? as usize,
                percentiles_us: [
                    f(x, "p50_us")?,
                    f(x, "p90_us")?,
                    f(x, "p99_us")?,
                    f(x, "p999_us")?,
                ],
            });
        }
        for x in v["saturation"].as_array()? {
            r.saturation.push(Saturation {
                target: x["target"].as_str()?.to_string(),
                in_flight: x["in_flight"].as_u64()? as usize,
                ops_per_sec: f(x, "ops_per_sec")?,
                hop_cpu_us_per_op: f(x, "hop_cpu_us_per_op")?,
                component_cpu_us_per_op: f(x, "component_cpu_us_per_op")?,
            });
        }
        Some(r)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "machine": self.machine,
            "fixed_rate_1000": self.fixed.iter().map(|f| json!({
                "target": f.target, "samples": f.samples,
                "p50_us": f.percentiles_us[0], "p90_us": f.percentiles_us[1],
                "p99_us": f.percentiles_us[2], "p999_us": f.percentiles_us[3],
            })).collect::<Vec<_>>(),
            "send_lateness_us": {"p50": self.send_lateness_p50_us, "p99": self.send_lateness_p99_us},
            "saturation": self.saturation.iter().map(|s| json!({
                "target": s.target, "in_flight": s.in_flight, "ops_per_sec": s.ops_per_sec,
                "hop_cpu_us_per_op": s.hop_cpu_us_per_op,
                "component_cpu_us_per_op": s.component_cpu_us_per_op,
            })).collect::<Vec<_>>(),
            "pubsub": self.pubsub.iter().map(|p| json!({
                "subscription_concurrency": p.subscription_concurrency, "batch": p.batch, "messages": p.messages,
                "publish_msgs_per_sec": p.publish_msgs_per_sec,
                "end_to_end_msgs_per_sec": p.end_to_end_msgs_per_sec,
                "p50_ms": p.p50_ms, "p99_ms": p.p99_ms,
            })).collect::<Vec<_>>(),
            "startup_ms": self.startup_ms.iter().map(|(n, ms)| json!({"sockets": n, "ms": ms})).collect::<Vec<_>>(),
            "rss_mib_50_components": {"idle": self.rss_idle_mib, "load": self.rss_load_mib, "peak": self.rss_hwm_mib},
            "targets": self.targets().into_iter().map(|(what, figure, met)| json!({"target": what, "figure": figure, "met": met})).collect::<Vec<_>>(),
        })
    }

    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&self.to_json())? + "\n",
        )?;
        self.write_chart(out)?;
        println!(
            "\nWrote {} and {}",
            out.join("results.json").display(),
            out.join("hop.svg").display()
        );
        Ok(())
    }

    pub fn write_chart(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out.join("hop.svg"), self.svg())?;
        Ok(())
    }

    /// Two grouped bar charts: latency percentiles at 1000/s, and throughput by depth.
    fn svg(&self) -> String {
        let names = ["direct", "grpc", "http", "forwarder"];
        let latency: Vec<Vec<f64>> = names
            .iter()
            .map(|n| {
                self.fixed
                    .iter()
                    .find(|f| f.target == *n)
                    .map_or(vec![0.0; 4], |f| f.percentiles_us.to_vec())
            })
            .collect();
        let throughput: Vec<Vec<f64>> = names
            .iter()
            .map(|n| {
                [1, 16, 64]
                    .iter()
                    .map(|d| self.sat(n, *d).map_or(0.0, |s| s.ops_per_sec))
                    .collect()
            })
            .collect();
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="400" viewBox="0 0 960 400" font-family="sans-serif" font-size="12">
<rect width="960" height="400" fill="white"/>
"#
        );
        let series = [
            ("(a) direct to component (UDS)", "#4c78a8"),
            ("(b) through plugd gRPC", "#f58518"),
            ("(c) through plugd HTTP", "#54a24b"),
            ("(d) minimal tonic forwarder", "#9d9d9d"),
        ];
        bars(
            &mut svg,
            (20.0, 0.0),
            "State Get latency at 1000 req/s (µs)",
            &["p50", "p90", "p99", "p99.9"],
            &latency,
            &series,
        );
        bars(
            &mut svg,
            (500.0, 0.0),
            "State Get throughput (ops/s) by depth",
            &["1 in flight", "16 in flight", "64 in flight"],
            &throughput,
            &series,
        );
        for (i, (label, color)) in series.iter().enumerate() {
            let x = 40.0 + i as f64 * 230.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="372" width="12" height="12" fill="{color}"/><text x="{}" y="382">{label}</text>"#,
                x + 16.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="480" y="396" text-anchor="middle" fill="#666" font-size="10">{}</text>"##,
            self.machine
        );
        svg.push_str("</svg>\n");
        svg
    }
}

/// A grouped bar chart in a 440 × 360 box at `origin`: one group per `groups` label, one bar
/// per series, values labelled on top.
fn bars(
    svg: &mut String,
    origin: (f64, f64),
    title: &str,
    groups: &[&str],
    values: &[Vec<f64>],
    series: &[(&str, &str)],
) {
    let (x0, y0) = origin;
    let (left, top, width, height) = (x0 + 50.0, y0 + 40.0, 390.0, 280.0);
    let max = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    let scale = nice_ceiling(max);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>"#,
        left + width / 2.0,
        y0 + 22.0
    );
    // Round steps: 0.2 of a 1 or 5 scale, 0.25 of a 2 scale.
    let steps = if (scale / 10f64.powf(scale.log10().floor()) - 2.0).abs() < 1e-9 {
        4
    } else {
        5
    };
    for tick in 0..=steps {
        let v = scale * f64::from(tick) / f64::from(steps);
        let y = top + height - height * f64::from(tick) / f64::from(steps);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end" font-size="10">{}</text>"##,
            left + width,
            left - 4.0,
            y + 3.0,
            short(v)
        );
    }
    let group_w = width / groups.len() as f64;
    let bar_w = (group_w * 0.8) / series.len() as f64;
    for (g, label) in groups.iter().enumerate() {
        let gx = left + group_w * g as f64 + group_w * 0.1;
        for (s, (_, color)) in series.iter().enumerate() {
            let v = values.get(s).and_then(|v| v.get(g)).copied().unwrap_or(0.0);
            let h = if scale > 0.0 { height * v / scale } else { 0.0 };
            let x = gx + bar_w * s as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                top + height - h,
                bar_w - 2.0,
                x + (bar_w - 2.0) / 2.0,
                top + height - h - 3.0,
                short(v)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            left + group_w * (g as f64 + 0.5),
            top + height + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" x2="{left}" y1="{top}" y2="{}" stroke="#333"/><line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#333"/>"##,
        top + height,
        left + width,
        top + height,
        top + height
    );
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}
