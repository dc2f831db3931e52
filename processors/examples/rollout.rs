//! Detection quality on the seeded rollout simulator: how soon a bad release or OTA update is
//! flagged, and how often a healthy one is, over hundreds of seeds.
//!
//! `cargo run --release -p trellis-processors --example rollout [-- SCALE [ALPHA [FILTER]]]`
//! prints one table (SCALE divides every run count, for a quick look; ALPHA replaces the default
//! `alpha`; FILTER keeps the scenarios whose name contains it; the figures in
//! `benchmarks/README.md` are the defaults at SCALE 1). Each scenario is 100,000 devices with a session every 30 minutes on average;
//! a staged rollout reaches 5% of them half an hour in, a full-fleet release all of them two
//! hours in.

use std::time::Instant;

use trellis_processors::detect::DetectConfig;
use trellis_processors::detect::sim::{
    self, PerfSpec, RolloutOutcome, RolloutSpec, SpikeSpec, VelocitySpec,
};

const MINUTE: i64 = 60_000;

#[derive(Clone)]
enum Spec {
    Sessions(RolloutSpec),
    Perf(PerfSpec),
    Spike(SpikeSpec),
    Velocity(VelocitySpec),
}

struct Scenario {
    name: &'static str,
    spec: Spec,
    runs: u64,
    /// The bar: flagged within this many minutes, or for performance this many candidate
    /// samples (None: a clean release, never flagged).
    within_min: Option<i64>,
}

fn steady_week(mean_per_5m: f64) -> Spec {
    let base = SpikeSpec::default();
    Spec::Spike(SpikeSpec {
        mean_per_5m,
        factor: 1.0,
        end_ms: base.start_ms + 7 * 24 * 60 * MINUTE,
        ..base
    })
}

fn perf(slowdown: f64) -> Spec {
    Spec::Perf(PerfSpec {
        slowdown,
        stop_at_first: slowdown > 1.0,
        ..PerfSpec::default()
    })
}

fn staged(crash_factor: f64, horizon_min: i64) -> RolloutSpec {
    let base = RolloutSpec::default();
    RolloutSpec {
        crash_factor,
        rollout_ms: base.start_ms + 30 * MINUTE,
        end_ms: base.start_ms + 30 * MINUTE + horizon_min * MINUTE,
        stop_at_first: crash_factor > 1.0,
        ..base
    }
}

/// Two hours of the previous release's history, then the release on every device.
fn full_fleet(crash_factor: f64, horizon_min: i64) -> RolloutSpec {
    let base = RolloutSpec::default();
    RolloutSpec {
        full_fleet: true,
        rollout_ms: base.rollout_ms,
        end_ms: base.rollout_ms + horizon_min * MINUTE,
        ..staged(crash_factor, horizon_min)
    }
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

/// Runs `runs` seeds of `spec` on both cores.
fn outcomes(spec: &Spec, config: &DetectConfig, runs: u64) -> Vec<RolloutOutcome> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (0..runs)
                        .filter(|seed| seed % threads == t)
                        .map(|seed| match spec {
                            Spec::Sessions(spec) => sim::run(
                                &RolloutSpec {
                                    seed: 1000 + seed,
                                    ..spec.clone()
                                },
                                config,
                            ),
                            Spec::Perf(spec) => sim::run_perf(
                                &PerfSpec {
                                    seed: 1000 + seed,
                                    ..spec.clone()
                                },
                                config,
                            ),
                            Spec::Spike(spec) => sim::run_spike(
                                &SpikeSpec {
                                    seed: 1000 + seed,
                                    ..spec.clone()
                                },
                                config,
                            ),
                            Spec::Velocity(spec) => sim::run_velocity(
                                &VelocitySpec {
                                    seed: 1000 + seed,
                                    ..spec.clone()
                                },
                                config,
                            ),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    })
}

fn row(name: &str, config: &DetectConfig, s: &Scenario) {
    let started = Instant::now();
    let results = outcomes(&s.spec, config, s.runs);
    let mut delays: Vec<i64> = results
        .iter()
        .filter_map(|o| o.candidate_delay_ms)
        .collect();
    delays.sort_unstable();
    let mut sessions: Vec<i64> = results
        .iter()
        .filter_map(|o| o.candidate_sessions_at_flag)
        .collect();
    sessions.sort_unstable();
    let false_alarms = results
        .iter()
        .filter(|o| o.other_flags > 0 || (s.within_min.is_none() && o.candidate_delay_ms.is_some()))
        .count();
    let fmt_min = |v: Option<i64>| {
        v.map_or("-".to_string(), |ms| {
            format!("{:.1}", ms as f64 / MINUTE as f64)
        })
    };
    let within = match (s.within_min, &s.spec) {
        (Some(limit), Spec::Sessions(_) | Spec::Spike(_) | Spec::Velocity(_)) => {
            let n = delays.iter().filter(|d| **d <= limit * MINUTE).count();
            format!(
                "{:.1}% within {limit} min",
                100.0 * n as f64 / s.runs as f64
            )
        }
        (Some(limit), Spec::Perf(_)) => {
            let n = sessions.iter().filter(|n| **n <= limit).count();
            format!(
                "{:.1}% within {limit} samples",
                100.0 * n as f64 / s.runs as f64
            )
        }
        (None, _) => "-".to_string(),
    };
    println!(
        "| {name} | {} | {} | {} | {within} | {} | {} | {} | {:.1}% ({false_alarms}) | {:.0} s |",
        s.name,
        s.runs,
        delays.len(),
        fmt_min(percentile(&delays, 0.5)),
        fmt_min(percentile(&delays, 0.9)),
        percentile(&sessions, 0.5).map_or("-".into(), |n| n.to_string()),
        100.0 * false_alarms as f64 / s.runs as f64,
        started.elapsed().as_secs_f64(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scale: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let mut default = DetectConfig::default();
    if let Some(alpha) = args.get(2).and_then(|a| a.parse().ok()) {
        default.alpha = alpha;
    }
    let filter = args.get(3).cloned().unwrap_or_default();
    let scenarios = [
        Scenario {
            name: "5% rollout, 2x crashes",
            spec: Spec::Sessions(staged(2.0, 120)),
            runs: 200 / scale,
            within_min: Some(15),
        },
        Scenario {
            name: "5% rollout, 1.5x crashes",
            spec: Spec::Sessions(staged(1.5, 120)),
            runs: 200 / scale,
            within_min: Some(60),
        },
        Scenario {
            name: "5% rollout, clean",
            spec: Spec::Sessions(staged(1.0, 180)),
            runs: 1000 / scale,
            within_min: None,
        },
        Scenario {
            name: "full fleet, 2x crashes",
            spec: Spec::Sessions(full_fleet(2.0, 120)),
            runs: 200 / scale,
            within_min: Some(15),
        },
        Scenario {
            name: "full fleet, 1.5x crashes",
            spec: Spec::Sessions(full_fleet(1.5, 120)),
            runs: 200 / scale,
            within_min: Some(60),
        },
        Scenario {
            name: "full fleet, clean",
            spec: Spec::Sessions(full_fleet(1.0, 180)),
            runs: 1000 / scale,
            within_min: None,
        },
        Scenario {
            name: "5% rollout, p75 screen load +20%",
            spec: perf(1.2),
            runs: 200 / scale,
            within_min: Some(2000),
        },
        Scenario {
            name: "5% rollout, screen load unchanged",
            spec: perf(1.0),
            runs: 1000 / scale,
            within_min: None,
        },
        Scenario {
            name: "issue at 5 per 5 min, 10x spike",
            spec: Spec::Spike(SpikeSpec {
                stop_at_first: true,
                ..SpikeSpec::default()
            }),
            runs: 200 / scale,
            within_min: Some(10),
        },
        Scenario {
            name: "steady issue (5 per 5 min), one week",
            spec: steady_week(5.0),
            runs: 1000 / scale,
            within_min: None,
        },
        Scenario {
            name: "steady issue (200 per 5 min), one week",
            spec: steady_week(200.0),
            runs: 200 / scale,
            within_min: None,
        },
        Scenario {
            name: "new issue on 2% of a 5% rollout's users",
            spec: Spec::Velocity(VelocitySpec::default()),
            runs: 200 / scale,
            within_min: Some(30),
        },
        Scenario {
            name: "new issue on 0.5% of a 5% rollout's users",
            spec: Spec::Velocity(VelocitySpec {
                hit_rate: 0.005,
                ..VelocitySpec::default()
            }),
            runs: 1000 / scale,
            within_min: None,
        },
        Scenario {
            name: "new issue on 0.8% of a 5% rollout's users",
            spec: Spec::Velocity(VelocitySpec {
                hit_rate: 0.008,
                ..VelocitySpec::default()
            }),
            runs: 1000 / scale,
            within_min: None,
        },
    ];
    println!(
        "| detector | scenario | runs | flagged | bar | delay p50 (min) | delay p90 (min) | candidate sessions (samples) at flag, p50 | false alarms | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    if filter.is_empty() {
        throughput(&default);
    }
    let name = format!("α {}", default.alpha);
    for s in scenarios.iter().filter(|s| s.name.contains(&filter)) {
        row(&name, &default, s);
    }
    if !filter.is_empty() {
        return;
    }
    // Where a tighter detector breaks the false-positive budget.
    let tighter = [
        (
            "α 0.01, effect ≥ 10%",
            DetectConfig {
                alpha: 0.01,
                min_relative_effect: 0.1,
                ..default.clone()
            },
        ),
        (
            "α 0.05, effect ≥ 0",
            DetectConfig {
                alpha: 0.05,
                min_relative_effect: 0.0,
                min_sessions: 100,
                min_events: 3,
                ..default.clone()
            },
        ),
    ];
    for (name, config) in &tighter {
        for s in [&scenarios[0], &scenarios[2], &scenarios[6], &scenarios[7]] {
            row(name, config, s);
        }
    }
}

/// The detectors' own cost, generation excluded: sessions and partials per second on one core.
fn throughput(config: &DetectConfig) {
    let sessions = sim::sessions(&staged(2.0, 120));
    let mut detector = trellis_processors::detect::ReleaseDetector::new(config.clone());
    let mut out = Vec::new();
    let started = Instant::now();
    for s in &sessions {
        detector.observe(s, &mut out);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "release detector: {} sessions in {:.2} s, {:.0} sessions/s on one core ({} detections)",
        sessions.len(),
        secs,
        sessions.len() as f64 / secs,
        out.len()
    );
}
