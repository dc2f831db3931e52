//! A seeded rollout simulator: the detectors' quality, measured without a broker.
//!
//! A fleet of devices runs sessions as a Poisson process (one every `session_interval` per
//! device on average, each lasting an exponential `session_length`). At `rollout_ms` a candidate
//! release reaches `candidate_share` of the devices (a staged OTA update on the same channel and
//! runtime version), or, with `full_fleet`, every device (a release that has the whole fleet
//! and must be judged against the previous one). Sessions crash, end abnormally or with errors
//! at the baseline rates, the candidate's crash rate multiplied by `crash_factor`.
//!
//! The sessions are fed, in the order the `process` stage would close them (by end time), to the
//! same [`ReleaseDetector`] the `detect` stage runs. [`run`] reports when the candidate was
//! first flagged and whether anything else was; `benchmarks/README.md` has the figures over
//! hundreds of seeds (`cargo run --release -p trellis-processors --example rollout`).

use trellis_schemas::records::{Detection, SessionRecord};
use trellis_schemas::{Release, SessionStatus};

use super::DetectConfig;
use super::release::{KIND, ReleaseDetector};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct RolloutSpec {
    /// Seed: the same seed gives the same sessions.
    pub seed: u64,
    /// Devices in the fleet.
    pub devices: u32,
    /// Mean time between a device's sessions, in ms.
    pub session_interval_ms: i64,
    /// Mean session length, in ms.
    pub session_length_ms: i64,
    /// Baseline crash rate (of sessions).
    pub crash_rate: f64,
    /// Baseline abnormal-exit rate.
    pub abnormal_rate: f64,
    /// Baseline errored-session rate.
    pub errored_rate: f64,
    /// The candidate's crash rate over the baseline's.
    pub crash_factor: f64,
    /// Share of devices that get the candidate (ignored with `full_fleet`).
    pub candidate_share: f64,
    /// Share of devices that get a second, healthy update at the same time (a clean release
    /// rolled out beside the candidate; it must never be flagged).
    pub clean_share: f64,
    /// Every device gets the candidate at `rollout_ms`.
    pub full_fleet: bool,
    /// Event time of the first simulated session (the baseline's history starts here).
    pub start_ms: i64,
    /// Event time the candidate is rolled out at.
    pub rollout_ms: i64,
    /// Event time the simulation ends at.
    pub end_ms: i64,
    /// Stop at the first detection of the candidate (for delay runs).
    pub stop_at_first: bool,
}

impl Default for RolloutSpec {
    /// The quality bar's fleet: 100,000 devices, a session every 30 minutes, 1% crashes, an
    /// update on 5% of the fleet after two hours of history, simulated for three hours more.
    fn default() -> Self {
        let start_ms = 1_790_000_000_000;
        RolloutSpec {
            seed: 1,
            devices: 100_000,
            session_interval_ms: 30 * 60_000,
            session_length_ms: 5 * 60_000,
            crash_rate: 0.01,
            abnormal_rate: 0.005,
            errored_rate: 0.03,
            crash_factor: 1.0,
            candidate_share: 0.05,
            clean_share: 0.0,
            full_fleet: false,
            start_ms,
            rollout_ms: start_ms + 2 * 3_600_000,
            end_ms: start_ms + 5 * 3_600_000,
            stop_at_first: false,
        }
    }
}

/// What one run gave.
#[derive(Debug, Clone, Default)]
pub struct RolloutOutcome {
    /// Event time from the candidate's first session to the end of the window its first
    /// detection (on any metric) opened at, in ms; `None` if it was never flagged.
    pub candidate_delay_ms: Option<i64>,
    /// The candidate's sessions when it was first flagged.
    pub candidate_sessions_at_flag: Option<i64>,
    /// Detections opened for releases other than the candidate (always false alarms here).
    pub other_flags: usize,
    /// Every detection emitted.
    pub detections: Vec<Detection>,
}

fn exponential(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.f64()).ln()
}

fn release(version: &str, update: Option<&str>) -> Release {
    Release {
        platform: "ios".into(),
        app_version: version.into(),
        build: Some("100".into()),
        runtime_version: Some("1.0.0".into()),
        update_id: update.map(str::to_string),
        channel: Some("production".into()),
        environment: Some("production".into()),
    }
}

/// The release the candidate runs in `spec`.
pub fn candidate_release(spec: &RolloutSpec) -> Release {
    if spec.full_fleet {
        release("2.1.0", None)
    } else {
        release("2.0.0", Some("update-candidate"))
    }
}

/// The release of the healthy update rolled out beside the candidate (`clean_share`).
pub fn clean_release() -> Release {
    release("2.0.0", Some("update-clean"))
}

/// A session the simulator has started: end, start, number, device, release (0 the current one,
/// 1 the candidate, 2 the clean update) and status (0 exited, 1 crashed, 2 abnormal, 3 errored).
type Running = (i64, i64, u64, u32, u8, u8);

/// The sessions of `spec`, ordered by end time.
pub fn sessions(spec: &RolloutSpec) -> Vec<SessionRecord> {
    let mut out = Vec::new();
    for_each_session(spec, |s| {
        out.push(s.clone());
        true
    });
    out
}

/// Calls `f` with each session of `spec` in end-time order, as the `process` stage closes them,
/// until it returns false. One record is reused for every call, so a run of millions of sessions
/// allocates little.
pub fn for_each_session(spec: &RolloutSpec, mut f: impl FnMut(&SessionRecord) -> bool) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::fmt::Write;

    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let releases = [
        release("2.0.0", Some("update-current")),
        candidate_release(spec),
        clean_release(),
    ];
    let rate_per_ms = f64::from(spec.devices) / spec.session_interval_ms as f64;
    let candidates = if spec.full_fleet {
        spec.devices
    } else {
        (f64::from(spec.devices) * spec.candidate_share).round() as u32
    };
    let clean_until = candidates + (f64::from(spec.devices) * spec.clean_share).round() as u32;
    // Sessions started but not ended yet, by end time.
    let mut running: BinaryHeap<Reverse<Running>> = BinaryHeap::new();
    let mut record = SessionRecord {
        project: "sim".into(),
        explicit: true,
        version: 1,
        ..SessionRecord::default()
    };
    let mut emit = |(ended_ms, started_ms, n, device, which, status): Running,
                    record: &mut SessionRecord| {
        let status = [
            SessionStatus::Exited,
            SessionStatus::Crashed,
            SessionStatus::Abnormal,
            SessionStatus::Errored,
        ][usize::from(status)];
        record.session_id.clear();
        let _ = write!(record.session_id, "s{n}");
        record.device_id.clear();
        let _ = write!(record.device_id, "d{device}");
        if record.release != releases[usize::from(which)] {
            record.release.clone_from(&releases[usize::from(which)]);
        }
        record.started_ms = started_ms;
        record.ended_ms = ended_ms;
        record.duration_ms = ended_ms - started_ms;
        record.status = status;
        record.crashed = status == SessionStatus::Crashed;
        f(record)
    };
    let mut t = spec.start_ms as f64;
    let mut n = 0u64;
    loop {
        t += exponential(&mut rng, 1.0 / rate_per_ms);
        let started_ms = t as i64;
        while let Some(Reverse(next)) = running.peek().copied() {
            if next.0 > started_ms {
                break;
            }
            running.pop();
            if !emit(next, &mut record) {
                return;
            }
        }
        if started_ms >= spec.end_ms {
            break;
        }
        n += 1;
        let device = rng.u32(0..spec.devices);
        let rolled_out = started_ms >= spec.rollout_ms;
        let which: u8 = if rolled_out && device < candidates {
            1
        } else if rolled_out && !spec.full_fleet && (candidates..clean_until).contains(&device) {
            2
        } else {
            0
        };
        let crash_rate = if which == 1 {
            spec.crash_rate * spec.crash_factor
        } else {
            spec.crash_rate
        };
        let roll = rng.f64();
        let status: u8 = if roll < crash_rate {
            1
        } else if roll < crash_rate + spec.abnormal_rate {
            2
        } else if roll < crash_rate + spec.abnormal_rate + spec.errored_rate {
            3
        } else {
            0
        };
        let ended_ms = started_ms + exponential(&mut rng, spec.session_length_ms as f64) as i64;
        if ended_ms < spec.end_ms {
            running.push(Reverse((ended_ms, started_ms, n, device, which, status)));
        }
    }
}

/// Each session as an SDK sends it to ingest's native batch endpoint: an `init` update at its
/// start and its final status at its end, as (event time, JSON), in the order they happened.
pub fn native_updates(sessions: &[SessionRecord]) -> Vec<(i64, serde_json::Value)> {
    let mut out = Vec::with_capacity(2 * sessions.len());
    for (n, s) in sessions.iter().enumerate() {
        let release = serde_json::to_value(&s.release).expect("a release serializes");
        let status = serde_json::to_value(s.status).expect("a status serializes");
        for (seq, (at, init, status)) in [
            (s.started_ms, true, serde_json::json!("ok")),
            (s.ended_ms, false, status),
        ]
        .into_iter()
        .enumerate()
        {
            out.push((
                at,
                serde_json::json!({
                    "kind": "session",
                    "event_id": format!("00000000-0000-4000-{seq:04}-{n:012}"),
                    "timestamp": at,
                    "device_id": s.device_id,
                    "session_id": s.session_id,
                    "release": release,
                    "init": init,
                    "status": status,
                    "started": s.started_ms,
                    "duration_ms": if init { 0 } else { s.duration_ms },
                    "seq": seq,
                }),
            ));
        }
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// Runs `spec` through a [`ReleaseDetector`] with `config`.
pub fn run(spec: &RolloutSpec, config: &DetectConfig) -> RolloutOutcome {
    let candidate = candidate_release(spec);
    let mut detector = ReleaseDetector::new(config.clone());
    let mut outcome = RolloutOutcome::default();
    let mut first_candidate_ms: Option<i64> = None;
    let mut candidate_sessions = 0;
    let mut out = Vec::new();
    for_each_session(spec, |session| {
        if session.release == candidate {
            first_candidate_ms =
                Some(first_candidate_ms.map_or(session.started_ms, |t| t.min(session.started_ms)));
            candidate_sessions += 1;
        }
        detector.observe(session, &mut out);
        for d in out.drain(..) {
            if d.kind == KIND && d.status == "open" {
                if d.release == candidate {
                    if outcome.candidate_delay_ms.is_none() {
                        let first = first_candidate_ms.unwrap_or(spec.rollout_ms);
                        outcome.candidate_delay_ms = Some(d.window_end_ms - first);
                        outcome.candidate_sessions_at_flag = Some(candidate_sessions);
                    }
                } else {
                    outcome.other_flags += 1;
                }
            }
            outcome.detections.push(d);
        }
        !(spec.stop_at_first && outcome.candidate_delay_ms.is_some())
    });
    outcome
}

/// The detections of a small bad rollout (20,000 devices, the update crashing three times as
/// often), every version of each: rows for the sinks' tests of the `detections` table.
pub fn sample_detections() -> Vec<Detection> {
    let base = RolloutSpec::default();
    let spec = RolloutSpec {
        seed: 3,
        devices: 20_000,
        crash_factor: 3.0,
        rollout_ms: base.start_ms + 30 * 60_000,
        end_ms: base.start_ms + 30 * 60_000 + 3_600_000,
        ..base
    };
    run(&spec, &DetectConfig::default()).detections
}

/// A performance rollout: screen-load samples of a fleet, per one-minute window, with an update
/// on `candidate_share` of them whose samples are `slowdown` times slower.
#[derive(Debug, Clone)]
pub struct PerfSpec {
    /// Seed.
    pub seed: u64,
    /// Samples the fleet sends per minute (screen loads of one screen).
    pub samples_per_minute: u32,
    /// Median sample, in ms.
    pub median_ms: f64,
    /// Spread: the standard deviation of the samples' logarithm (log-normal).
    pub sigma: f64,
    /// The candidate's samples over the baseline's (1.2: 20% slower throughout).
    pub slowdown: f64,
    /// Share of the samples that come from the candidate after the rollout.
    pub candidate_share: f64,
    /// Event time of the first window.
    pub start_ms: i64,
    /// Event time of the rollout.
    pub rollout_ms: i64,
    /// Event time the simulation ends at.
    pub end_ms: i64,
    /// Stop at the first detection of the candidate.
    pub stop_at_first: bool,
}

impl Default for PerfSpec {
    /// 2,000 screen loads a minute (median 400 ms, log-normal σ 0.5), an update on 5% of the
    /// fleet half an hour in, three hours in all.
    fn default() -> Self {
        let start_ms = 1_790_000_000_000;
        PerfSpec {
            seed: 1,
            samples_per_minute: 2000,
            median_ms: 400.0,
            sigma: 0.5,
            slowdown: 1.0,
            candidate_share: 0.05,
            start_ms,
            rollout_ms: start_ms + 30 * 60_000,
            end_ms: start_ms + 3 * 3_600_000 + 30 * 60_000,
            stop_at_first: false,
        }
    }
}

fn normal(rng: &mut fastrand::Rng) -> f64 {
    // Box-Muller.
    let (u, v) = (1.0 - rng.f64(), rng.f64());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// Runs `spec` through a [`super::PerfDetector`] with `config`: every minute, one health partial
/// per release carrying its samples' sketch, as the `process` stage emits them.
/// `candidate_sessions_at_flag` of the outcome counts the candidate's samples.
pub fn run_perf(spec: &PerfSpec, config: &DetectConfig) -> RolloutOutcome {
    use sketches_ddsketch::{Config as SketchConfig, DDSketch};
    use trellis_schemas::records::{HealthPartial, PerfSketch};

    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let old = release("2.0.0", Some("update-current"));
    let candidate = release("2.0.0", Some("update-candidate"));
    let mut detector = super::PerfDetector::new(config.clone());
    let mut outcome = RolloutOutcome::default();
    let mut candidate_samples = 0i64;
    let mut out = Vec::new();
    let mu = spec.median_ms.ln();
    let mut window = spec.start_ms;
    while window < spec.end_ms {
        let rolled_out = window >= spec.rollout_ms;
        let mut sketches = [
            DDSketch::new(SketchConfig::defaults()),
            DDSketch::new(SketchConfig::defaults()),
        ];
        for _ in 0..spec.samples_per_minute {
            let on_candidate = rolled_out && rng.f64() < spec.candidate_share;
            let mut value = (mu + spec.sigma * normal(&mut rng)).exp();
            if on_candidate {
                value *= spec.slowdown;
            }
            sketches[usize::from(on_candidate)].add(value);
        }
        for (which, sketch) in sketches.iter().enumerate() {
            if sketch.count() == 0 {
                continue;
            }
            let release = if which == 1 { &candidate } else { &old };
            let partial = HealthPartial {
                partial_id: format!("{window}-{which}"),
                project: "sim".into(),
                release: release.clone(),
                window_start_ms: window,
                window_ms: 60_000,
                perf: vec![PerfSketch {
                    metric: "screen_load".into(),
                    device_class: "iOS/iPhone".into(),
                    screen: "Home".into(),
                    count: sketch.count() as i64,
                    sketch: serde_json::to_string(sketch).unwrap_or_default(),
                }],
                ..HealthPartial::default()
            };
            detector.observe(&partial, &mut out);
            if which == 1 {
                candidate_samples += sketch.count() as i64;
            }
        }
        for d in out.drain(..) {
            if d.status == "open" {
                if d.release == candidate {
                    if outcome.candidate_delay_ms.is_none() {
                        outcome.candidate_delay_ms = Some(d.window_end_ms - spec.rollout_ms);
                        outcome.candidate_sessions_at_flag = Some(candidate_samples);
                    }
                } else {
                    outcome.other_flags += 1;
                }
            }
            outcome.detections.push(d);
        }
        if spec.stop_at_first && outcome.candidate_delay_ms.is_some() {
            break;
        }
        window += 60_000;
    }
    outcome
}

/// One issue's errors as a Poisson process: `mean_per_5m` events per 5 minutes, `factor` times
/// that from `spike_ms` on.
#[derive(Debug, Clone)]
pub struct SpikeSpec {
    /// Seed.
    pub seed: u64,
    /// The usual rate, in events per 5 minutes.
    pub mean_per_5m: f64,
    /// The rate from `spike_ms` on, over the usual one (1: no spike).
    pub factor: f64,
    /// Event time of the first error.
    pub start_ms: i64,
    /// Event time the spike starts.
    pub spike_ms: i64,
    /// Event time the simulation ends.
    pub end_ms: i64,
    /// Stop at the first detection.
    pub stop_at_first: bool,
}

impl Default for SpikeSpec {
    /// 5 events per 5 minutes for 12 hours, then 10 times that for an hour.
    fn default() -> Self {
        let start_ms = 1_790_000_000_000;
        SpikeSpec {
            seed: 1,
            mean_per_5m: 5.0,
            factor: 10.0,
            start_ms,
            spike_ms: start_ms + 12 * 3_600_000,
            end_ms: start_ms + 13 * 3_600_000,
            stop_at_first: false,
        }
    }
}

/// Runs `spec` through a [`super::spike::SpikeDetector`]. The delay in the outcome runs from
/// `spike_ms` to the event that opened the first spike; a spike opened before `spike_ms` (or
/// with `factor` 1) counts in `other_flags`.
pub fn run_spike(spec: &SpikeSpec, config: &DetectConfig) -> RolloutOutcome {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut detector = super::spike::SpikeDetector::new(config.clone());
    let mut state = super::spike::SpikeState::default();
    let mut outcome = RolloutOutcome::default();
    let mut out = Vec::new();
    let mut t = spec.start_ms as f64;
    let mut after_spike = 0i64;
    loop {
        let rate = if (t as i64) >= spec.spike_ms {
            spec.mean_per_5m * spec.factor
        } else {
            spec.mean_per_5m
        };
        t += exponential(&mut rng, 300_000.0 / rate);
        let at = t as i64;
        if at >= spec.end_ms {
            break;
        }
        if at >= spec.spike_ms {
            after_spike += 1;
        }
        detector.observe(&mut state, "sim", "issue-1", at, &mut out);
        for d in out.drain(..) {
            if d.status == "open" {
                if at >= spec.spike_ms && spec.factor > 1.0 && outcome.candidate_delay_ms.is_none()
                {
                    outcome.candidate_delay_ms = Some(at - spec.spike_ms);
                    outcome.candidate_sessions_at_flag = Some(after_spike);
                } else {
                    outcome.other_flags += 1;
                }
            }
            outcome.detections.push(d);
        }
        if spec.stop_at_first && outcome.candidate_delay_ms.is_some() {
            break;
        }
    }
    outcome
}

/// A new issue on a staged rollout: `devices` devices on the update, a session every
/// `session_interval_ms` each from `start_ms`, and a share `hit_rate` of the devices hitting the
/// issue (an error within 5 minutes of their first session).
#[derive(Debug, Clone)]
pub struct VelocitySpec {
    /// Seed.
    pub seed: u64,
    /// Devices on the update.
    pub devices: u32,
    /// Mean time between a device's sessions, in ms.
    pub session_interval_ms: i64,
    /// The share of devices that hit the issue.
    pub hit_rate: f64,
    /// Event time the update reaches its devices.
    pub start_ms: i64,
    /// Event time the simulation ends.
    pub end_ms: i64,
}

impl Default for VelocitySpec {
    /// A 5% rollout of the quality bar's fleet (5,000 devices, a session every 30 minutes) and a
    /// new issue that 2% of its devices hit, for an hour.
    fn default() -> Self {
        let start_ms = 1_790_000_000_000;
        VelocitySpec {
            seed: 1,
            devices: 5000,
            session_interval_ms: 30 * 60_000,
            hit_rate: 0.02,
            start_ms,
            end_ms: start_ms + 3_600_000,
        }
    }
}

/// Runs `spec` through a [`super::velocity::VelocityDetector`]. The delay in the outcome runs
/// from the first error to the error that opened its finding, and the sessions at flag
/// are the users then; with a `hit_rate` under `velocity_share`, an opened finding
/// counts in `other_flags`.
pub fn run_velocity(spec: &VelocitySpec, config: &DetectConfig) -> RolloutOutcome {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let release = candidate_release(&RolloutSpec::default());
    // (time, device, is an error), in time order.
    let mut timeline: Vec<(i64, u32, bool)> = Vec::new();
    for device in 0..spec.devices {
        // A device's first session is anywhere in its first interval (it is mid-cycle).
        let mut t = spec.start_ms as f64 + rng.f64() * spec.session_interval_ms as f64;
        let hit = rng.f64() < spec.hit_rate;
        let mut first = true;
        while (t as i64) < spec.end_ms {
            timeline.push((t as i64, device, false));
            if hit && first {
                timeline.push((t as i64 + rng.i64(0..5 * 60_000), device, true));
            }
            first = false;
            t += exponential(&mut rng, spec.session_interval_ms as f64);
        }
    }
    timeline.sort_unstable();
    let mut detector = super::velocity::VelocityDetector::new(config.clone());
    let mut state = super::velocity::VelocityState::default();
    let mut outcome = RolloutOutcome::default();
    let mut out = Vec::new();
    let mut first_error = None;
    let user = |device: u32| xxhash_rust::xxh3::xxh3_64(&device.to_le_bytes());
    for (t, device, error) in timeline {
        if error {
            first_error.get_or_insert(t);
            detector.observe_error(
                &mut state,
                "sim",
                "issue-1",
                &release,
                user(device),
                t,
                &mut out,
            );
        } else {
            detector.observe_start(&mut state, "sim", &release, user(device), t, &mut out);
        }
        for d in out.drain(..) {
            if d.status == "open" {
                if spec.hit_rate >= config.velocity_share {
                    outcome.candidate_delay_ms = first_error.map(|f| t - f);
                    outcome.candidate_sessions_at_flag = Some(d.candidate_count);
                } else {
                    outcome.other_flags += 1;
                }
            }
            outcome.detections.push(d);
        }
    }
    outcome
}
