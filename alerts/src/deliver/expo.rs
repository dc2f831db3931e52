//! Expo push: messages to on-call devices in batches of at most 100, tickets, then receipts;
//! a token Expo no longer knows (`DeviceNotRegistered`) leaves the on-call list for good.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::{DeliverError, Failure};

/// Expo takes at most this many messages per request.
pub const BATCH: usize = 100;

/// The message for one device.
pub fn message(to: &str, title: &str, body: &str, data: Value) -> Value {
    json!({
        "to": to,
        "title": title,
        "body": body,
        "data": data,
        "sound": "default",
        "priority": "high",
        "channelId": "alerts",
    })
}

/// What a batch's tickets said: the ids to fetch receipts for (with their tokens), and the
/// tokens Expo does not know.
#[derive(Debug, Default)]
pub struct Tickets {
    /// `(ticket id, token)` of every accepted message.
    pub accepted: Vec<(String, String)>,
    /// Tokens answered `DeviceNotRegistered`.
    pub unregistered: Vec<String>,
    /// Other per-message errors, for the log.
    pub errors: Vec<String>,
}

/// Reads the answer to `/send` for `tokens`, in order.
pub fn tickets(answer: &Value, tokens: &[String]) -> Result<Tickets, Failure> {
    let Some(data) = answer["data"].as_array() else {
        return Err(Failure::Retry {
            reason: format!("Expo answered without tickets: {answer}"),
            after: None,
        });
    };
    let mut out = Tickets::default();
    for (ticket, token) in data.iter().zip(tokens) {
        match ticket["status"].as_str() {
            Some("ok") => {
                if let Some(id) = ticket["id"].as_str() {
                    out.accepted.push((id.to_string(), token.clone()));
                }
            }
            _ if ticket["details"]["error"] == "DeviceNotRegistered" => {
                out.unregistered.push(token.clone());
            }
            _ => out.errors.push(format!(
                "{token}: {}",
                ticket["message"].as_str().unwrap_or("error")
            )),
        }
    }
    Ok(out)
}

/// The ticket ids whose receipts say `DeviceNotRegistered`.
pub fn unregistered_receipts(answer: &Value) -> Vec<String> {
    answer["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, receipt)| receipt["details"]["error"] == "DeviceNotRegistered")
        .map(|(id, _)| id.clone())
        .collect()
}

/// The tokens removed from each Expo destination, one file per destination.
pub struct Removed {
    dir: PathBuf,
    removed: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl Removed {
    /// The removed tokens kept under `dir`.
    pub fn new(dir: &Path) -> Self {
        Removed {
            dir: dir.to_path_buf(),
            removed: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, destination: &str) -> PathBuf {
        self.dir.join(format!("expo-{destination}.removed"))
    }

    fn loaded<'a>(
        &self,
        map: &'a mut HashMap<String, BTreeSet<String>>,
        destination: &str,
    ) -> &'a mut BTreeSet<String> {
        map.entry(destination.to_string()).or_insert_with(|| {
            std::fs::read_to_string(self.path(destination))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
    }

    /// `tokens` without the removed ones.
    pub fn active(&self, destination: &str, tokens: &[String]) -> Vec<String> {
        let mut map = self.removed.lock().expect("not poisoned");
        let removed = self.loaded(&mut map, destination);
        tokens
            .iter()
            .filter(|t| !removed.contains(*t))
            .cloned()
            .collect()
    }

    /// Removes `token` for good; false if it was removed already.
    pub fn remove(&self, destination: &str, token: &str) -> Result<bool, DeliverError> {
        let mut map = self.removed.lock().expect("not poisoned");
        let removed = self.loaded(&mut map, destination);
        if !removed.insert(token.to_string()) {
            return Ok(false);
        }
        let path = self.path(destination);
        let io = |source| DeliverError::Log {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let mut text = String::new();
        for t in removed.iter() {
            text.push_str(t);
            text.push('\n');
        }
        let tmp = path.with_extension("writing");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers Expo gave the real SDK (../shared/fixtures/sdk-captures/expo-server-sdk).
    #[test]
    fn tickets_and_receipts_as_expo_answers_them() {
        let answer = json!({"data": [
            {"status": "ok", "id": "e42d2795-fd07-4abb-9050-f7381114ad7e"},
            {"status": "ok", "id": "24fab47c-f186-4d6c-a23c-48e7188694d9"},
            {"status": "error",
             "message": "\"ExponentPushToken[zzzzzzzzzzzzzzzzzzzzzz]\" is not a registered push notification recipient",
             "details": {"error": "DeviceNotRegistered", "expoPushToken": "ExponentPushToken[zzzzzzzzzzzzzzzzzzzzzz]"}},
        ]});
        let tokens: Vec<String> = ["x", "y", "z"]
            .map(|c| format!("ExponentPushToken[{}]", c.repeat(22)))
            .to_vec();
        let t = tickets(&answer, &tokens).unwrap();
        assert_eq!(t.accepted.len(), 2);
        assert_eq!(t.accepted[1].1, tokens[1]);
        assert_eq!(t.unregistered, [tokens[2].clone()]);
        let receipts = json!({"data": {
            "e42d2795-fd07-4abb-9050-f7381114ad7e": {"status": "ok"},
            "24fab47c-f186-4d6c-a23c-48e7188694d9": {"status": "error",
              "message": "The device cannot receive push notifications anymore",
              "details": {"error": "DeviceNotRegistered"}},
        }});
        assert_eq!(
            unregistered_receipts(&receipts),
            ["24fab47c-f186-4d6c-a23c-48e7188694d9"]
        );
        assert!(tickets(&json!({"errors": []}), &tokens).is_err());
    }

    #[test]
    fn a_removed_token_stays_removed_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = vec!["a".to_string(), "b".to_string()];
        let removed = Removed::new(dir.path());
        assert!(removed.remove("oncall", "a").unwrap());
        assert!(!removed.remove("oncall", "a").unwrap());
        assert_eq!(removed.active("oncall", &tokens), ["b"]);
        assert_eq!(Removed::new(dir.path()).active("oncall", &tokens), ["b"]);
        assert_eq!(Removed::new(dir.path()).active("other", &tokens), tokens);
    }
}
