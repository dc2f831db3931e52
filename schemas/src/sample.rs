//! Deterministic sample events of every kind, for tests, benchmarks and the load generator.
//!
//! Each event is a function of a seed, so a test can regenerate what it sent and compare.

use crate::model::*;

fn pick<'a>(seed: u64, options: &[&'a str]) -> &'a str {
    options[(seed % options.len() as u64) as usize]
}

fn opt(seed: u64, value: String) -> Option<String> {
    (!seed.is_multiple_of(5)).then_some(value)
}

/// The fields every event carries, for the `n`th event of `device` in `project`.
pub fn common(project: &str, device: u64, n: u64) -> Common {
    let seed = device.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
    let timestamp_ms = 1_764_000_000_000 + (n as i64) * 1_000 + (device as i64 % 600) * 7;
    Common {
        event_id: format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            device,
            n >> 16 & 0xffff,
            n & 0xfff,
            device & 0xfff,
            n
        ),
        project: project.to_string(),
        timestamp_ms,
        sent_at_ms: opt(seed, String::new()).map(|_| timestamp_ms + 250),
        received_at_ms: timestamp_ms + 400,
        device_id: Some(format!("device-{device}")),
        user_id: opt(seed >> 3, format!("user-{}", device / 2)),
        session_id: Some(format!("session-{device}-{}", n / 50)),
        release: Release {
            platform: pick(device, &["ios", "android"]).to_string(),
            app_version: pick(device >> 1, &["2.13.0", "2.14.0", "2.14.1"]).to_string(),
            build: Some(format!("{}", 1400 + device % 3)),
            runtime_version: Some("2.14".to_string()),
            update_id: opt(
                device >> 2,
                format!(
                    "{:08x}-0000-4000-8000-00000000{:04x}",
                    device % 4,
                    device % 4
                ),
            ),
            channel: Some(pick(device >> 4, &["production", "staging"]).to_string()),
            environment: Some("production".to_string()),
        },
        device: Device {
            model: Some(pick(device, &["iPhone15,2", "Pixel 8", "SM-S918B"]).to_string()),
            os_name: Some(pick(device, &["iOS", "Android"]).to_string()),
            os_version: Some(pick(device >> 1, &["17.4.1", "14", "18.0"]).to_string()),
            locale: opt(seed >> 5, "de-DE".to_string()),
            timezone: Some("Europe/Berlin".to_string()),
        },
        sdk: Sdk {
            name: "trellis.react-native".to_string(),
            version: "1.4.0".to_string(),
        },
    }
}

/// The `n`th event of `device` in `project`; its kind cycles through every kind.
pub fn event(project: &str, device: u64, n: u64) -> Event {
    let common = common(project, device, n);
    let seed = n.wrapping_mul(31) ^ device;
    match n % 6 {
        0 => Event::Analytics(AnalyticsEvent {
            common,
            name: pick(
                seed,
                &[
                    "plant_watered",
                    "post_liked",
                    "strain_searched",
                    "diagnosis_started",
                    "reminder_set",
                ],
            )
            .to_string(),
            screen: opt(
                seed,
                pick(seed >> 2, &["Home", "PlantDetail", "Community"]).to_string(),
            ),
            properties: format!(
                r#"{{"plant_id":"p-{}","count":{},"source":"widget"}}"#,
                seed % 97,
                seed % 7
            ),
        }),
        1 => Event::Error(ErrorEvent {
            common,
            level: if seed.is_multiple_of(4) {
                Level::Fatal
            } else {
                Level::Error
            },
            handled: !seed.is_multiple_of(4),
            message: opt(seed, "Could not load plant".to_string()),
            exceptions: vec![Exception {
                exception_type: pick(seed, &["TypeError", "RangeError"]).to_string(),
                value: Some(format!(
                    "undefined is not an object (evaluating 'plant.{}')",
                    pick(seed >> 1, &["name", "id"])
                )),
                module: None,
                mechanism: Some("onerror".to_string()),
                frames: vec![
                    Frame {
                        function: Some("loadPlant".to_string()),
                        module: None,
                        filename: Some("app:///index.android.bundle".to_string()),
                        abs_path: Some("app:///index.android.bundle".to_string()),
                        lineno: Some(1),
                        colno: Some(120_000 + (seed % 500) as i64),
                        in_app: true,
                    },
                    Frame {
                        function: None,
                        module: Some("react-native".to_string()),
                        filename: None,
                        abs_path: None,
                        lineno: None,
                        colno: None,
                        in_app: false,
                    },
                ],
            }],
            breadcrumbs: vec![Breadcrumb {
                timestamp_ms: 1_764_000_000_000 + n as i64,
                breadcrumb_type: Some("navigation".to_string()),
                category: Some("navigation".to_string()),
                message: None,
                level: Some("info".to_string()),
                data: r#"{"from":"Home","to":"PlantDetail"}"#.to_string(),
            }],
            tags: vec![Tag {
                key: "screen".to_string(),
                value: "PlantDetail".to_string(),
            }],
            fingerprint: if seed.is_multiple_of(3) {
                vec!["{{ default }}".to_string(), "plant".to_string()]
            } else {
                vec![]
            },
            transaction: opt(seed, "PlantDetail".to_string()),
            contexts: r#"{"app":{"app_start_time":"2025-11-24T12:00:00Z"}}"#.to_string(),
            issue_id: None,
        }),
        2 => Event::Performance(PerformanceSample {
            common,
            metric: pick(
                seed,
                &["app_start_cold", "screen_load", "http_request", "memory"],
            )
            .to_string(),
            value: (seed % 3000) as f64 + 0.5,
            unit: "millisecond".to_string(),
            screen: opt(seed, "PlantDetail".to_string()),
            attributes: vec![Tag {
                key: "method".to_string(),
                value: "GET".to_string(),
            }],
        }),
        3 => Event::Transaction(Transaction {
            common,
            name: "PlantDetail".to_string(),
            op: Some("ui.load".to_string()),
            trace_id: format!("{:032x}", seed),
            span_id: format!("{:016x}", seed),
            status: Some("ok".to_string()),
            start_us: 1_764_000_000_000_000 + n as i64,
            end_us: 1_764_000_000_250_000 + n as i64,
            spans: vec![Span {
                span_id: format!("{:016x}", seed + 1),
                parent_span_id: Some(format!("{:016x}", seed)),
                op: "http.client".to_string(),
                description: Some("GET /plants/42".to_string()),
                status: Some("ok".to_string()),
                start_us: 1_764_000_000_010_000 + n as i64,
                end_us: 1_764_000_000_090_000 + n as i64,
            }],
            measurements: vec![Measurement {
                name: "frames_slow".to_string(),
                value: 3.0,
                unit: None,
            }],
            tags: vec![],
        }),
        4 => Event::Session(SessionUpdate {
            common,
            init: n % 12 == 4,
            status: [
                SessionStatus::Ok,
                SessionStatus::Exited,
                SessionStatus::Crashed,
                SessionStatus::Abnormal,
                SessionStatus::Errored,
            ][(seed % 5) as usize],
            errors: (seed % 3) as i64,
            started_ms: 1_764_000_000_000,
            duration_ms: opt(seed, String::new()).map(|_| (seed % 100_000) as i64),
            seq: n as i64,
        }),
        _ => Event::Notification(Notification {
            common,
            stage: [
                NotificationStage::Scheduled,
                NotificationStage::Sent,
                NotificationStage::Delivered,
                NotificationStage::Opened,
                NotificationStage::Failed,
            ][(seed % 5) as usize],
            notification_id: format!("notif-{}", seed % 1000),
            campaign: opt(seed, "watering-reminder".to_string()),
            deep_link: Some("plantapp://plants/42".to_string()),
            provider: Some("expo".to_string()),
            error_code: (seed % 5 == 4).then(|| "DeviceNotRegistered".to_string()),
        }),
    }
}
