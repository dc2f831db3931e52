//! Fingerprinting of error events: which events are occurrences of the same bug.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use trellis_schemas::ErrorEvent;
use xxhash_rust::xxh3::Xxh3Default;

use super::config::{CompiledRules, GroupingConfig, GroupingConfigError};
use super::lifecycle::LifecyclePolicy;
use super::normalize::{frame_key, normalize_message, normalize_type};

/// At most this many frames (the innermost) of one exception take part in a fingerprint.
const MAX_FRAMES_PER_EXCEPTION: usize = 64;

/// The hash of a fingerprint's components (xxh3-128); shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FingerprintHash(pub u128);

impl FingerprintHash {
    /// Hashes components; each is length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ.
    pub fn of<S: AsRef<str>>(components: &[S]) -> Self {
        let mut hasher = Xxh3Default::new();
        for component in components {
            let bytes = component.as_ref().as_bytes();
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        Self(hasher.digest128())
    }
}

impl fmt::Display for FingerprintHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A string that is not 32 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a fingerprint hash (32 hex digits): `{0}`")]
pub struct ParseHashError(String);

impl FromStr for FingerprintHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(ParseHashError(s.to_owned()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| ParseHashError(s.to_owned()))
    }
}

impl Serialize for FingerprintHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FingerprintHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Which rule produced a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupingRule {
    /// A project's fingerprint rule matched.
    ProjectRule {
        /// The rule's name.
        name: String,
    },
    /// The SDK sent a fingerprint.
    SdkFingerprint,
    /// The exception types with the normalized frames (in-app ones, or all when none is).
    Stacktrace,
    /// As `Stacktrace`, plus the normalized messages: no kept frame had a module or a file
    /// (unsymbolicated bundle frames), and function names alone are weak evidence.
    StacktraceAndMessage,
    /// The exception types with their normalized messages: no frame carried anything stable.
    TypeAndMessage,
    /// The normalized message alone: the event has no exception type.
    Message,
    /// The event has neither an exception nor a message; all such events of a project group
    /// together.
    Nothing,
}

/// An event's fingerprint: what it was grouped by, its hash, and the rule that chose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The components the hash covers, for explanation and debugging: `type:TypeError`,
    /// `frame:handlePress@screens/Cart`, `message:User <n> not found`, or a custom
    /// fingerprint's values.
    pub components: Vec<String>,
    /// The hash of `components`.
    pub hash: FingerprintHash,
    /// The rule that produced the components.
    pub rule: GroupingRule,
}

/// Groups error events by the rules of one project, and carries its lifecycle and merge
/// settings. Build once per project config; `Grouper::default()` is the default config's.
#[derive(Debug, Clone)]
pub struct Grouper {
    rules: CompiledRules,
    policy: LifecyclePolicy,
    merge_threshold: f64,
    max_merge_candidates: usize,
}

impl Default for Grouper {
    fn default() -> Self {
        let config = GroupingConfig::default();
        Self {
            rules: CompiledRules::default(),
            policy: config.lifecycle_policy(),
            merge_threshold: config.merge_threshold,
            max_merge_candidates: config.max_merge_candidates,
        }
    }
}

impl Grouper {
    /// Validates and compiles `config`; the error names the bad rule.
    pub fn new(config: &GroupingConfig) -> Result<Self, GroupingConfigError> {
        Ok(Self {
            rules: CompiledRules::compile(config)?,
            policy: config.lifecycle_policy(),
            merge_threshold: config.merge_threshold,
            max_merge_candidates: config.max_merge_candidates,
        })
    }

    /// The project's lifecycle settings.
    pub fn policy(&self) -> &LifecyclePolicy {
        &self.policy
    }

    /// The similarity from which an issue is a merge candidate, and how many are proposed.
    pub fn merge_settings(&self) -> (f64, usize) {
        (self.merge_threshold, self.max_merge_candidates)
    }

    /// The fingerprint of `event`. The first of these that applies decides:
    /// 1. the first of the project's fingerprint rules that matches;
    /// 2. the SDK's fingerprint;
    /// 3. the exception types and the normalized in-app frames (all frames when none is in-app),
    ///    plus the normalized messages when no kept frame has a module or file (unsymbolicated
    ///    bundle frames keep only function names, which code paths share);
    /// 4. the exception types and their normalized messages;
    /// 5. the normalized message.
    ///
    /// In 1 and 2, `{{ default }}` stands for the components of 3 to 5; a fingerprint that is
    /// `{{ default }}` alone is the same as none.
    pub fn fingerprint(&self, event: &ErrorEvent) -> Fingerprint {
        if let Some(rule) = self.rules.matching_rule(event) {
            return self.explicit(
                &rule.fingerprint,
                event,
                GroupingRule::ProjectRule {
                    name: rule.name.clone(),
                },
            );
        }
        let sdk = &event.fingerprint;
        let sdk_given = match sdk.as_slice() {
            [] => false,
            [only] => !is_default_placeholder(only),
            _ => true,
        };
        if sdk_given {
            return self.explicit(sdk, event, GroupingRule::SdkFingerprint);
        }
        let (components, rule) = self.default_components(event);
        Fingerprint {
            hash: FingerprintHash::of(&components),
            components,
            rule,
        }
    }

    /// The innermost in-app frame of the main exception (the first of the chain that has
    /// frames) as `function @ module`, else its innermost frame, else the event's transaction.
    pub fn culprit(&self, event: &ErrorEvent) -> Option<String> {
        let frames = event
            .exceptions
            .iter()
            .find(|exception| !exception.frames.is_empty())
            .map(|exception| exception.frames.as_slice())
            .unwrap_or_default();
        let describe = |in_app_only: bool| {
            frames
                .iter()
                .rev()
                .filter(|frame| !in_app_only || self.rules.in_app(frame))
                .find_map(|frame| frame_key(frame).display())
        };
        describe(true)
            .or_else(|| describe(false))
            .or_else(|| event.transaction.clone().filter(|t| !t.is_empty()))
    }

    /// A custom fingerprint with `{{ default }}` expanded.
    fn explicit(&self, values: &[String], event: &ErrorEvent, rule: GroupingRule) -> Fingerprint {
        let mut components = Vec::with_capacity(values.len());
        let mut default = None;
        for value in values {
            if is_default_placeholder(value) {
                let (parts, _) = default.get_or_insert_with(|| self.default_components(event));
                components.extend(parts.iter().cloned());
            } else {
                components.push(value.clone());
            }
        }
        Fingerprint {
            hash: FingerprintHash::of(&components),
            components,
            rule,
        }
    }

    /// Rules 3 to 5.
    fn default_components(&self, event: &ErrorEvent) -> (Vec<String>, GroupingRule) {
        if let Some((mut components, located)) = self.stack_components(event) {
            if located {
                return (components, GroupingRule::Stacktrace);
            }
            push_messages(&mut components, event);
            return (components, GroupingRule::StacktraceAndMessage);
        }
        let typed = event
            .exceptions
            .iter()
            .any(|exception| !exception.exception_type.trim().is_empty());
        if typed {
            let mut components = Vec::with_capacity(event.exceptions.len() * 2);
            for exception in &event.exceptions {
                push_type(&mut components, &exception.exception_type);
                push_message(&mut components, exception.value.as_deref());
            }
            return (components, GroupingRule::TypeAndMessage);
        }
        let message = std::iter::once(event.message.as_deref())
            .chain(event.exceptions.iter().map(|e| e.value.as_deref()))
            .flatten()
            .map(normalize_message)
            .find(|message| !message.is_empty());
        match message {
            Some(message) => (vec![format!("message:{message}")], GroupingRule::Message),
            None => (vec!["nothing".to_owned()], GroupingRule::Nothing),
        }
    }

    /// Rule 3: `None` when no frame carries anything stable; else the components and whether
    /// any kept frame has a module or file.
    fn stack_components(&self, event: &ErrorEvent) -> Option<(Vec<String>, bool)> {
        let in_app: Vec<bool> = event
            .exceptions
            .iter()
            .flat_map(|exception| &exception.frames)
            .map(|frame| self.rules.in_app(frame))
            .collect();
        let any_in_app = in_app.contains(&true);
        let mut in_app = in_app.into_iter();
        let mut components = Vec::new();
        let mut frame_count = 0;
        let mut located = false;
        for exception in &event.exceptions {
            push_type(&mut components, &exception.exception_type);
            let start = components.len();
            for frame in &exception.frames {
                let frame_in_app = in_app.next().unwrap_or(false);
                if any_in_app && !frame_in_app {
                    continue;
                }
                let key = frame_key(frame);
                let Some(component) = key.component() else {
                    continue;
                };
                located |= key.has_location();
                // Recursion: one component for a run of the same frame.
                if components.len() > start && components.last() == Some(&component) {
                    continue;
                }
                components.push(component);
            }
            let frames = components.len() - start;
            if frames > MAX_FRAMES_PER_EXCEPTION {
                components.drain(start..start + frames - MAX_FRAMES_PER_EXCEPTION);
            }
            frame_count += frames.min(MAX_FRAMES_PER_EXCEPTION);
        }
        (frame_count > 0).then_some((components, located))
    }
}

fn push_messages(components: &mut Vec<String>, event: &ErrorEvent) {
    for exception in &event.exceptions {
        push_message(components, exception.value.as_deref());
    }
}

fn push_message(components: &mut Vec<String>, value: Option<&str>) {
    if let Some(value) = value {
        let message = normalize_message(value);
        if !message.is_empty() {
            components.push(format!("message:{message}"));
        }
    }
}

fn push_type(components: &mut Vec<String>, exception_type: &str) {
    let normalized = normalize_type(exception_type);
    if !normalized.is_empty() {
        components.push(format!("type:{normalized}"));
    }
}

/// `{{ default }}`, also spelled `{{default}}`.
fn is_default_placeholder(value: &str) -> bool {
    value
        .trim()
        .strip_prefix("{{")
        .and_then(|rest| rest.strip_suffix("}}"))
        .is_some_and(|inner| inner.trim() == "default")
}

#[cfg(test)]
#[path = "fingerprint_tests.rs"]
mod tests;
