//! Per-project grouping rules: which frames are the app's own, custom fingerprints, and the
//! lifecycle and merge settings. Plain serde structs, compiled once by [`crate::grouping::Grouper::new`].

use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use trellis_schemas::{ErrorEvent, Frame};

use super::lifecycle::LifecyclePolicy;

/// The largest compiled size of one pattern from a config (bounds what a config can cost).
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Grouping settings of one project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupingConfig {
    /// Rules that mark frames in-app or not, overriding the SDK's `in_app` flag. The first rule
    /// that matches a frame's module, file name or path decides; a frame no rule matches keeps
    /// the SDK's flag.
    pub in_app: Vec<InAppRule>,
    /// Custom fingerprint rules, tried in order before the SDK fingerprint and the default
    /// grouping; the first that matches sets the event's fingerprint.
    pub fingerprints: Vec<FingerprintRule>,
    /// How long an issue stays `new` after its first event, and `regressed` after its regression,
    /// before it becomes `ongoing` (humantime, for example `7d`).
    #[serde(with = "humantime_serde")]
    pub new_issue_window: Duration,
    /// Similarity (0 to 1, estimated Jaccard over normalized frames) from which an existing
    /// issue is proposed as a merge candidate for a new one.
    pub merge_threshold: f64,
    /// At most this many merge candidates are proposed per new issue.
    pub max_merge_candidates: usize,
    /// Distinct devices (session starts and errors) a release newer than the project's newest
    /// must come from before it becomes the newest, the release "resolve in the next release"
    /// waits to be passed: one event must not move it.
    pub release_min_devices: usize,
}

impl Default for GroupingConfig {
    fn default() -> Self {
        Self {
            in_app: Vec::new(),
            fingerprints: Vec::new(),
            new_issue_window: Duration::from_secs(7 * 24 * 3600),
            merge_threshold: 0.5,
            max_merge_candidates: 5,
            release_min_devices: super::lifecycle::DEFAULT_RELEASE_MIN_DEVICES,
        }
    }
}

impl GroupingConfig {
    /// The lifecycle settings of this config.
    pub fn lifecycle_policy(&self) -> LifecyclePolicy {
        LifecyclePolicy {
            new_issue_window_ms: i64::try_from(self.new_issue_window.as_millis())
                .unwrap_or(i64::MAX),
            release_min_devices: self.release_min_devices.max(1),
        }
    }
}

/// Marks the frames whose module, file name or path matches a pattern as in-app or not.
/// Exactly one of `glob` and `regex` is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InAppRule {
    /// A glob matched against the whole module, file name and path of a frame: `**` matches
    /// anything, `*` anything but `/`, `?` one character but `/`. Examples: `**/node_modules/**`,
    /// `com.myapp.*`.
    #[serde(default)]
    pub glob: Option<String>,
    /// A regular expression (Rust `regex` syntax) searched in the same fields.
    #[serde(default)]
    pub regex: Option<String>,
    /// `true`: matching frames are the app's own code; `false`: they are library code.
    pub in_app: bool,
}

/// Sets the fingerprint of the events it matches. Every condition given must hold; at least one
/// is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintRule {
    /// The rule's name, unique in the project; shown in errors and in grouping explanations.
    pub name: String,
    /// A glob over the exception type (`*` matches anything), for example `ChunkLoadError` or
    /// `requests.exceptions.*`. Holds when any exception of the chain matches.
    #[serde(default)]
    pub exception_type: Option<String>,
    /// A regular expression searched in the message: an exception's value (the same exception
    /// as `exception_type`, when both are given) or the event's log message.
    #[serde(default)]
    pub message: Option<String>,
    /// A tag as `key=value`; the value is a glob (`*` matches anything).
    #[serde(default)]
    pub tag: Option<String>,
    /// The fingerprint to set. `{{ default }}` stands for the components of the default
    /// grouping, so `["{{ default }}", "payments"]` splits the default groups by a constant.
    pub fingerprint: Vec<String>,
}

/// A config that cannot be used; the message names the rule and the field.
#[derive(Debug, thiserror::Error)]
pub enum GroupingConfigError {
    /// An in-app rule without exactly one of `glob` and `regex`.
    #[error("grouping.in_app[{index}]: give exactly one of `glob` and `regex`")]
    InAppPatternCount {
        /// The rule's position in `in_app`.
        index: usize,
    },
    /// An in-app rule whose pattern does not compile.
    #[error("grouping.in_app[{index}]: invalid pattern `{pattern}`")]
    InAppPattern {
        /// The rule's position in `in_app`.
        index: usize,
        /// The pattern as written.
        pattern: String,
        /// Why it does not compile.
        #[source]
        source: Box<regex::Error>,
    },
    /// A fingerprint rule that is incomplete or ambiguous.
    #[error("grouping.fingerprints[{index}] (`{name}`): {problem}")]
    FingerprintRule {
        /// The rule's position in `fingerprints`.
        index: usize,
        /// The rule's name.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A fingerprint rule whose pattern does not compile.
    #[error("grouping.fingerprints[{index}] (`{name}`).{field}: invalid pattern `{pattern}`")]
    FingerprintPattern {
        /// The rule's position in `fingerprints`.
        index: usize,
        /// The rule's name.
        name: String,
        /// The field holding the pattern.
        field: &'static str,
        /// The pattern as written.
        pattern: String,
        /// Why it does not compile.
        #[source]
        source: Box<regex::Error>,
    },
    /// A merge threshold outside 0 to 1.
    #[error("grouping.merge_threshold: must be within 0 and 1, got {0}")]
    MergeThreshold(f64),
}

/// An in-app rule, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledInAppRule {
    pattern: Regex,
    in_app: bool,
}

/// A fingerprint rule, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledFingerprintRule {
    pub(crate) name: String,
    exception_type: Option<Regex>,
    message: Option<Regex>,
    tag: Option<(String, Regex)>,
    pub(crate) fingerprint: Vec<String>,
}

/// Compiled rules: what [`crate::grouping::Grouper`] runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledRules {
    pub(crate) in_app: Vec<CompiledInAppRule>,
    pub(crate) fingerprints: Vec<CompiledFingerprintRule>,
}

impl CompiledRules {
    /// Validates `config` and compiles its patterns.
    pub(crate) fn compile(config: &GroupingConfig) -> Result<Self, GroupingConfigError> {
        if !(0.0..=1.0).contains(&config.merge_threshold) {
            return Err(GroupingConfigError::MergeThreshold(config.merge_threshold));
        }
        let in_app = config
            .in_app
            .iter()
            .enumerate()
            .map(|(index, rule)| compile_in_app(index, rule))
            .collect::<Result<_, _>>()?;
        let mut fingerprints: Vec<CompiledFingerprintRule> = Vec::new();
        for (index, rule) in config.fingerprints.iter().enumerate() {
            let problem = |problem| GroupingConfigError::FingerprintRule {
                index,
                name: rule.name.clone(),
                problem,
            };
            if rule.name.trim().is_empty() {
                return Err(problem("`name` is empty"));
            }
            if fingerprints.iter().any(|seen| seen.name == rule.name) {
                return Err(problem("another rule has the same `name`"));
            }
            fingerprints.push(compile_fingerprint(index, rule)?);
        }
        Ok(Self {
            in_app,
            fingerprints,
        })
    }

    /// Whether `frame` is the app's own code: the first matching rule decides, else the SDK.
    pub(crate) fn in_app(&self, frame: &Frame) -> bool {
        let fields = [&frame.module, &frame.filename, &frame.abs_path];
        for rule in &self.in_app {
            let hit = fields
                .iter()
                .filter_map(|field| field.as_deref())
                .any(|value| rule.pattern.is_match(value));
            if hit {
                return rule.in_app;
            }
        }
        frame.in_app
    }

    /// The first fingerprint rule that matches `event`.
    pub(crate) fn matching_rule(&self, event: &ErrorEvent) -> Option<&CompiledFingerprintRule> {
        self.fingerprints.iter().find(|rule| rule.matches(event))
    }
}

impl CompiledFingerprintRule {
    fn matches(&self, event: &ErrorEvent) -> bool {
        if let Some((key, value)) = &self.tag {
            let tagged = event
                .tags
                .iter()
                .any(|tag| tag.key == *key && value.is_match(&tag.value));
            if !tagged {
                return false;
            }
        }
        if self.exception_type.is_none() && self.message.is_none() {
            return true;
        }
        let message_matches = |text: Option<&str>| match &self.message {
            None => true,
            Some(pattern) => text.is_some_and(|text| pattern.is_match(text)),
        };
        let exception_matches = event.exceptions.iter().any(|exception| {
            let type_matches = self
                .exception_type
                .as_ref()
                .is_none_or(|pattern| pattern.is_match(&exception.exception_type));
            type_matches && message_matches(exception.value.as_deref())
        });
        exception_matches
            || (self.exception_type.is_none() && message_matches(event.message.as_deref()))
    }
}

fn compile_in_app(
    index: usize,
    rule: &InAppRule,
) -> Result<CompiledInAppRule, GroupingConfigError> {
    let (pattern, source) = match (&rule.glob, &rule.regex) {
        (Some(glob), None) => (glob, glob_to_regex(glob, true)),
        (None, Some(regex)) => (regex, regex.clone()),
        _ => return Err(GroupingConfigError::InAppPatternCount { index }),
    };
    let pattern = build(&source).map_err(|source| GroupingConfigError::InAppPattern {
        index,
        pattern: pattern.clone(),
        source: Box::new(source),
    })?;
    Ok(CompiledInAppRule {
        pattern,
        in_app: rule.in_app,
    })
}

fn compile_fingerprint(
    index: usize,
    rule: &FingerprintRule,
) -> Result<CompiledFingerprintRule, GroupingConfigError> {
    let problem = |problem| GroupingConfigError::FingerprintRule {
        index,
        name: rule.name.clone(),
        problem,
    };
    let bad_pattern = |field, pattern: &str, source| GroupingConfigError::FingerprintPattern {
        index,
        name: rule.name.clone(),
        field,
        pattern: pattern.to_owned(),
        source: Box::new(source),
    };
    if rule.exception_type.is_none() && rule.message.is_none() && rule.tag.is_none() {
        return Err(problem(
            "give at least one of `exception_type`, `message` and `tag`",
        ));
    }
    if rule.fingerprint.is_empty() {
        return Err(problem("`fingerprint` is empty"));
    }
    let exception_type = rule
        .exception_type
        .as_deref()
        .map(|glob| {
            build(&glob_to_regex(glob, false)).map_err(|e| bad_pattern("exception_type", glob, e))
        })
        .transpose()?;
    let message = rule
        .message
        .as_deref()
        .map(|regex| build(regex).map_err(|e| bad_pattern("message", regex, e)))
        .transpose()?;
    let tag = match rule.tag.as_deref() {
        None => None,
        Some(tag) => {
            let Some((key, value)) = tag.split_once('=') else {
                return Err(problem("`tag` must be `key=value`"));
            };
            if key.trim().is_empty() {
                return Err(problem("`tag` has an empty key"));
            }
            let value = build(&glob_to_regex(value.trim(), false))
                .map_err(|e| bad_pattern("tag", tag, e))?;
            Some((key.trim().to_owned(), value))
        }
    };
    Ok(CompiledFingerprintRule {
        name: rule.name.clone(),
        exception_type,
        message,
        tag,
        fingerprint: rule.fingerprint.clone(),
    })
}

fn build(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
}

/// Translates a glob into an anchored regular expression. With `paths`, `*` and `?` stop at `/`
/// and `**` crosses it; without, `*` matches anything.
fn glob_to_regex(glob: &str, paths: bool) -> String {
    let mut out = String::with_capacity(glob.len() * 2 + 2);
    out.push('^');
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                    out.push_str("(?:.*/)?");
                } else {
                    out.push_str(".*");
                }
            }
            '*' => out.push_str(if paths { "[^/]*" } else { ".*" }),
            '?' => out.push_str(if paths { "[^/]" } else { "." }),
            other => {
                let mut buf = [0; 4];
                out.push_str(&regex::escape(other.encode_utf8(&mut buf)));
            }
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_schemas::{Exception, Tag};

    fn rule(name: &str) -> FingerprintRule {
        FingerprintRule {
            name: name.into(),
            exception_type: None,
            message: None,
            tag: None,
            fingerprint: vec!["x".into()],
        }
    }

    #[test]
    fn globs_match_paths_and_modules() {
        let glob = |g: &str| Regex::new(&glob_to_regex(g, true)).unwrap();
        assert!(glob("**/node_modules/**").is_match("/app/node_modules/react-native/x.js"));
        assert!(glob("**/node_modules/**").is_match("node_modules/x.js"));
        assert!(!glob("src/*.ts").is_match("src/a/b.ts"));
        assert!(glob("com.myapp.*").is_match("com.myapp.ui.CartView"));
        assert!(!glob("com.myapp.*").is_match("com.myappx"));
    }

    #[test]
    fn config_is_strict_and_documented_by_its_errors() {
        let unknown = serde_json::from_str::<GroupingConfig>(r#"{"in_ap": []}"#);
        assert!(unknown.is_err());

        let config: GroupingConfig = serde_json::from_str(
            r#"{"new_issue_window": "3d", "in_app": [{"glob": "src/**", "in_app": true}]}"#,
        )
        .unwrap();
        assert_eq!(
            config.lifecycle_policy().new_issue_window_ms,
            3 * 86_400_000
        );
        assert!(CompiledRules::compile(&config).is_ok());

        let both = GroupingConfig {
            in_app: vec![InAppRule {
                glob: Some("a".into()),
                regex: Some("b".into()),
                in_app: true,
            }],
            ..GroupingConfig::default()
        };
        let err = CompiledRules::compile(&both).unwrap_err().to_string();
        assert_eq!(
            err,
            "grouping.in_app[0]: give exactly one of `glob` and `regex`"
        );

        let bad_regex = GroupingConfig {
            fingerprints: vec![FingerprintRule {
                message: Some("(unclosed".into()),
                ..rule("timeouts")
            }],
            ..GroupingConfig::default()
        };
        let err = CompiledRules::compile(&bad_regex).unwrap_err().to_string();
        assert!(
            err.starts_with("grouping.fingerprints[0] (`timeouts`).message"),
            "{err}"
        );

        let no_condition = GroupingConfig {
            fingerprints: vec![rule("empty")],
            ..GroupingConfig::default()
        };
        let err = CompiledRules::compile(&no_condition)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`empty`") && err.contains("at least one"),
            "{err}"
        );

        let bad_tag = GroupingConfig {
            fingerprints: vec![FingerprintRule {
                tag: Some("screen".into()),
                ..rule("t")
            }],
            ..GroupingConfig::default()
        };
        assert!(
            CompiledRules::compile(&bad_tag)
                .unwrap_err()
                .to_string()
                .contains("key=value")
        );

        let duplicate = GroupingConfig {
            fingerprints: vec![
                FingerprintRule {
                    tag: Some("a=b".into()),
                    ..rule("same")
                },
                FingerprintRule {
                    tag: Some("a=c".into()),
                    ..rule("same")
                },
            ],
            ..GroupingConfig::default()
        };
        let err = CompiledRules::compile(&duplicate).unwrap_err().to_string();
        assert!(
            err.starts_with("grouping.fingerprints[1] (`same`)"),
            "{err}"
        );

        let threshold = GroupingConfig {
            merge_threshold: 1.5,
            ..GroupingConfig::default()
        };
        assert!(matches!(
            CompiledRules::compile(&threshold),
            Err(GroupingConfigError::MergeThreshold(_))
        ));
    }

    #[test]
    fn in_app_rules_override_the_sdk_in_order() {
        let config = GroupingConfig {
            in_app: vec![
                InAppRule {
                    glob: Some("**/node_modules/my-lib/**".into()),
                    regex: None,
                    in_app: true,
                },
                InAppRule {
                    glob: Some("**/node_modules/**".into()),
                    regex: None,
                    in_app: false,
                },
                InAppRule {
                    glob: None,
                    regex: Some(r"^app\.".into()),
                    in_app: true,
                },
            ],
            ..GroupingConfig::default()
        };
        let rules = CompiledRules::compile(&config).unwrap();
        let frame = |path: &str, in_app| Frame {
            filename: Some(path.into()),
            in_app,
            ..Frame::default()
        };
        assert!(!rules.in_app(&frame("/a/node_modules/react/x.js", true)));
        assert!(rules.in_app(&frame("/a/node_modules/my-lib/x.js", false)));
        assert!(rules.in_app(&frame("src/x.ts", true)));
        assert!(!rules.in_app(&frame("src/x.ts", false)));
        let module = Frame {
            module: Some("app.billing".into()),
            ..Frame::default()
        };
        assert!(rules.in_app(&module));
    }

    #[test]
    fn fingerprint_rules_match_type_message_and_tag_together() {
        let config = GroupingConfig {
            fingerprints: vec![FingerprintRule {
                exception_type: Some("requests.*".into()),
                message: Some("timed out".into()),
                tag: Some("screen=Check*".into()),
                ..rule("timeouts")
            }],
            ..GroupingConfig::default()
        };
        let rules = CompiledRules::compile(&config).unwrap();
        let mut event = ErrorEvent {
            exceptions: vec![Exception {
                exception_type: "requests.exceptions.ReadTimeout".into(),
                value: Some("read timed out after 30s".into()),
                ..Exception::default()
            }],
            tags: vec![Tag {
                key: "screen".into(),
                value: "Checkout".into(),
            }],
            ..ErrorEvent::default()
        };
        assert_eq!(
            rules.matching_rule(&event).map(|r| r.name.as_str()),
            Some("timeouts")
        );
        event.tags[0].value = "Home".into();
        assert!(rules.matching_rule(&event).is_none());
        event.tags[0].value = "Checkout".into();
        event.exceptions[0].value = Some("connection refused".into());
        assert!(rules.matching_rule(&event).is_none());
    }
}
