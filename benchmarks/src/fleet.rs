//! A synthetic app fleet: native-API JSON events as a plant-care app's users produce them.
//!
//! The mix (by weight) is configurable; by default most events are product analytics from the
//! app's features (plant management, community posts, strain search, diagnosis, calendar
//! reminders), with errors carrying React Native stack traces, performance samples, session
//! updates and push-notification steps. Everything is a function of a seed, so a run is
//! reproducible.

use serde_json::{Value, json};

/// Weights of each kind in the generated stream.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Analytics events.
    pub analytics: u32,
    /// Errors with stack traces.
    pub errors: u32,
    /// Performance samples.
    pub performance: u32,
    /// Session updates.
    pub sessions: u32,
    /// Notification lifecycle steps.
    pub notifications: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            analytics: 70,
            errors: 5,
            performance: 15,
            sessions: 5,
            notifications: 5,
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    /// `analytics=70,errors=5,performance=15,sessions=5,notifications=5` (missing ones are 0).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mix = Mix {
            analytics: 0,
            errors: 0,
            performance: 0,
            sessions: 0,
            notifications: 0,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or(format!("{part:?} is not kind=weight"))?;
            let v: u32 = v.parse().map_err(|e| format!("{part:?}: {e}"))?;
            match k {
                "analytics" => mix.analytics = v,
                "errors" => mix.errors = v,
                "performance" => mix.performance = v,
                "sessions" => mix.sessions = v,
                "notifications" => mix.notifications = v,
                other => return Err(format!("unknown kind {other:?}")),
            }
        }
        if mix.total() == 0 {
            return Err("the mix has no weight".into());
        }
        Ok(mix)
    }
}

impl Mix {
    fn total(&self) -> u32 {
        self.analytics + self.errors + self.performance + self.sessions + self.notifications
    }
}

const FEATURES: &[(&str, &[&str])] = &[
    (
        "PlantDetail",
        &[
            "plant_watered",
            "plant_fertilized",
            "plant_photo_added",
            "plant_repotted",
        ],
    ),
    (
        "Community",
        &["post_viewed", "post_liked", "comment_posted", "post_shared"],
    ),
    (
        "StrainSearch",
        &["strain_searched", "strain_viewed", "strain_saved"],
    ),
    (
        "Diagnosis",
        &[
            "diagnosis_started",
            "diagnosis_photo_taken",
            "diagnosis_finished",
        ],
    ),
    (
        "Calendar",
        &["reminder_set", "reminder_completed", "reminder_snoozed"],
    ),
];
const RELEASES: &[(&str, &str, &str, Option<&str>)] = &[
    ("ios", "2.13.0", "1388", None),
    (
        "ios",
        "2.14.0",
        "1402",
        Some("5b1e7c2a-7d1e-4f55-9d2a-8a6f0e3b1c01"),
    ),
    (
        "android",
        "2.14.0",
        "1402",
        Some("5b1e7c2a-7d1e-4f55-9d2a-8a6f0e3b1c02"),
    ),
    (
        "android",
        "2.14.1",
        "1409",
        Some("9c4f2d11-0b6a-4a8e-8f3d-2e7b5c9a4d03"),
    ),
];
const MODELS: &[(&str, &str, &str)] = &[
    ("iPhone15,2", "iOS", "17.4.1"),
    ("iPhone14,5", "iOS", "16.7"),
    ("Pixel 8", "Android", "14"),
    ("SM-S918B", "Android", "14"),
];

/// A deterministic event generator for one simulated device population.
pub struct Fleet {
    rng: fastrand::Rng,
    mix: Mix,
    devices: u64,
    seq: u64,
    base_ms: i64,
}

impl Fleet {
    /// A fleet of `devices` devices, generating with `mix`, from `seed`.
    pub fn new(seed: u64, devices: u64, mix: Mix) -> Fleet {
        Fleet {
            rng: fastrand::Rng::with_seed(seed),
            mix,
            devices: devices.max(1),
            seq: 0,
            base_ms: 1_795_600_000_000,
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.usize(..items.len())]
    }

    /// The next event as a native-API JSON object.
    pub fn event(&mut self) -> Value {
        self.seq += 1;
        let device = self.rng.u64(..self.devices);
        let (platform, version, build, update) = *self.pick(RELEASES);
        let (model, os, os_version) = *self.pick(MODELS);
        let timestamp = self.base_ms + (self.seq as i64) * 13;
        let mut e = json!({
            "event_id": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", self.rng.u32(..), self.rng.u16(..), self.rng.u16(..0xfff), self.rng.u16(..0xfff), self.seq),
            "timestamp": timestamp,
            "device_id": format!("device-{device}"),
            "user_id": format!("user-{}", device / 2),
            "session_id": format!("s-{device}-{}", self.seq / 200),
            "release": {"platform": platform, "app_version": version, "build": build, "channel": "production"},
            "device": {"model": model, "os_name": os, "os_version": os_version},
        });
        if let Some(u) = update {
            e["release"]["update_id"] = json!(u);
        }
        let roll = self.rng.u32(..self.mix.total());
        let m = self.mix;
        let body = if roll < m.analytics {
            let (screen, names) = *self.pick(FEATURES);
            let name = *self.pick(names);
            json!({"kind": "analytics", "name": name, "screen": screen, "properties": {"plant_id": format!("p-{}", self.rng.u32(..5000)), "source": "app", "position": self.rng.u8(..20)}})
        } else if roll < m.analytics + m.errors {
            let column = 100_000 + self.rng.u32(..50_000);
            json!({"kind": "error", "level": "error", "handled": self.rng.bool(), "exceptions": [{
                "type": "TypeError", "value": "undefined is not an object (evaluating 'plant.schedule.next')",
                "frames": [
                    {"function": "computeNextWatering", "filename": "app:///index.android.bundle", "lineno": 1, "colno": column, "in_app": true},
                    {"function": "PlantDetail", "filename": "app:///index.android.bundle", "lineno": 1, "colno": column + 812, "in_app": true},
                    {"function": "renderWithHooks", "module": "react-native", "in_app": false}]}],
                "breadcrumbs": [{"timestamp": timestamp - 900, "category": "navigation", "message": "Home -> PlantDetail"}],
                "tags": {"screen": "PlantDetail"}})
        } else if roll < m.analytics + m.errors + m.performance {
            let (metric, unit, value) = *self.pick(&[
                ("app_start_cold", "millisecond", 1800.0),
                ("screen_load", "millisecond", 350.0),
                ("http_request", "millisecond", 220.0),
                ("frames_slow", "none", 3.0),
            ]);
            json!({"kind": "performance", "metric": metric, "unit": unit, "value": value * (0.5 + self.rng.f64()), "screen": "PlantDetail"})
        } else if roll < m.analytics + m.errors + m.performance + m.sessions {
            let status = *self.pick(&["ok", "exited", "exited", "exited", "crashed", "errored"]);
            json!({"kind": "session", "init": self.rng.u8(..4) == 0, "status": status, "errors": (status != "ok" && status != "exited") as u8, "started": timestamp - 60_000, "duration_ms": 60_000, "seq": self.seq})
        } else {
            let stage = *self.pick(&["scheduled", "sent", "delivered", "opened", "failed"]);
            json!({"kind": "notification", "stage": stage, "notification_id": format!("n-{}", self.rng.u32(..10_000)), "campaign": "watering-reminder", "deep_link": "plantapp://plants/42", "provider": "expo"})
        };
        for (k, v) in body.as_object().expect("an object") {
            e[k] = v.clone();
        }
        e
    }

    /// A native batch body of `n` events.
    pub fn batch(&mut self, n: usize) -> Vec<u8> {
        let events: Vec<Value> = (0..n).map(|_| self.event()).collect();
        serde_json::to_vec(
            &json!({"sent_at": self.base_ms + self.seq as i64 * 13, "events": events}),
        )
        .expect("serializable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_the_configured_mix_of_realistic_sizes() {
        let mut fleet = Fleet::new(1, 1000, Mix::default());
        let events: Vec<Value> = (0..2000).map(|_| fleet.event()).collect();
        let analytics = events.iter().filter(|e| e["kind"] == "analytics").count();
        assert!((1250..1550).contains(&analytics), "{analytics}");
        let avg = events.iter().map(|e| e.to_string().len()).sum::<usize>() / events.len();
        assert!((430..530).contains(&avg), "average event size {avg}");
        let mut again = Fleet::new(1, 1000, Mix::default());
        assert_eq!(again.event(), events[0], "a seed reproduces the stream");
    }
}
