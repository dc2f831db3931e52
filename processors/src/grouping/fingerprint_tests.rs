//! Fingerprint rules, their order and `{{ default }}`.

use super::*;
use crate::grouping::config::FingerprintRule;
use trellis_schemas::{Exception, Frame, Tag};

fn frame(function: &str, filename: &str, line: i64, in_app: bool) -> Frame {
    Frame {
        function: Some(function.into()),
        filename: Some(filename.into()),
        lineno: Some(line),
        colno: Some(line * 7),
        in_app,
        ..Frame::default()
    }
}

fn event(ty: &str, value: &str, frames: Vec<Frame>) -> ErrorEvent {
    ErrorEvent {
        exceptions: vec![Exception {
            exception_type: ty.into(),
            value: Some(value.into()),
            frames,
            ..Exception::default()
        }],
        ..ErrorEvent::default()
    }
}

fn cart_crash(line: i64, bundle: &str) -> ErrorEvent {
    event(
        "TypeError",
        &format!("Cannot read property 'id' of undefined (item {line})"),
        vec![
            frame(
                "renderRoot",
                "node_modules/react-native/Renderer.js",
                line,
                false,
            ),
            frame("CartScreen", "app:///src/screens/Cart.tsx", line, true),
            frame("?anon_0_", bundle, 1, true),
            frame("handlePress", "app:///src/screens/Cart.tsx", line + 3, true),
            frame("forEach", "[native code]", 0, false),
        ],
    )
}

#[test]
fn stack_rule_ignores_lines_bundles_and_library_frames() {
    let grouper = Grouper::default();
    let a = grouper.fingerprint(&cart_crash(10, "index.android.bundle"));
    let b = grouper.fingerprint(&cart_crash(99, "app:///main.jsbundle"));
    assert_eq!(a.rule, GroupingRule::Stacktrace);
    assert_eq!(
        a.components,
        [
            "type:TypeError",
            "frame:CartScreen@screens/Cart",
            "frame:handlePress@screens/Cart"
        ]
    );
    assert_eq!(a.hash, b.hash);

    let mut other_function = cart_crash(10, "index.android.bundle");
    other_function.exceptions[0].frames[3].function = Some("handleRemove".into());
    assert_ne!(grouper.fingerprint(&other_function).hash, a.hash);
    let mut other_type = cart_crash(10, "index.android.bundle");
    other_type.exceptions[0].exception_type = "ReferenceError".into();
    assert_ne!(grouper.fingerprint(&other_type).hash, a.hash);
}

#[test]
fn unsymbolicated_frames_are_joined_by_the_message() {
    let grouper = Grouper::default();
    let hermes = |column, message: &str| {
        event(
            "TypeError",
            message,
            vec![
                frame(
                    "callFunctionReturnFlushedQueue",
                    "index.android.bundle",
                    1,
                    true,
                ),
                frame("t", "index.android.bundle", column, true),
                frame(
                    "onPress",
                    "address at index.android.bundle:1:234567",
                    column,
                    true,
                ),
            ],
        )
    };
    let a = grouper.fingerprint(&hermes(100, "Cannot read property 'id' of undefined"));
    assert_eq!(a.rule, GroupingRule::StacktraceAndMessage);
    assert_eq!(
        a.components,
        [
            "type:TypeError",
            "frame:callFunctionReturnFlushedQueue",
            "frame:onPress",
            "message:Cannot read property <quoted> of undefined"
        ]
    );
    assert_eq!(
        a.hash,
        grouper
            .fingerprint(&hermes(900, "Cannot read property 'name' of undefined"))
            .hash
    );
    assert_ne!(
        a.hash,
        grouper
            .fingerprint(&hermes(100, "x is not a function"))
            .hash
    );
}

#[test]
fn all_frames_count_when_none_is_in_app_and_chains_count_every_member() {
    let grouper = Grouper::default();
    let system = event(
        "SIGSEGV",
        "",
        vec![frame("objc_msgSend", "libobjc.A.dylib", 1, false)],
    );
    let print = grouper.fingerprint(&system);
    assert_eq!(
        print.components,
        ["type:SIGSEGV", "frame:objc_msgSend@libobjc.A"]
    );

    let mut chained = cart_crash(10, "index.android.bundle");
    chained.exceptions.push(Exception {
        exception_type: "NetworkError".into(),
        ..Exception::default()
    });
    let print = grouper.fingerprint(&chained);
    assert_eq!(
        print.components.last().map(String::as_str),
        Some("type:NetworkError")
    );
    assert_ne!(
        print.hash,
        grouper.fingerprint(&cart_crash(10, "x.bundle")).hash
    );
}

#[test]
fn falls_back_to_type_and_message_then_message() {
    let grouper = Grouper::default();
    let minified = |line| {
        event(
            "Error",
            &format!("Request {line} failed with status 500"),
            vec![
                frame("t", "index.android.bundle", 1, true),
                frame("anonymous", "main.jsbundle", line, true),
            ],
        )
    };
    let print = grouper.fingerprint(&minified(3));
    assert_eq!(print.rule, GroupingRule::TypeAndMessage);
    assert_eq!(
        print.components,
        ["type:Error", "message:Request <n> failed with status <n>"]
    );
    assert_eq!(print.hash, grouper.fingerprint(&minified(8)).hash);

    let message = ErrorEvent {
        message: Some("Payment provider slow for user 42".into()),
        ..ErrorEvent::default()
    };
    let print = grouper.fingerprint(&message);
    assert_eq!(print.rule, GroupingRule::Message);
    assert_eq!(
        print.components,
        ["message:Payment provider slow for user <n>"]
    );
    assert_eq!(
        grouper.fingerprint(&ErrorEvent::default()).rule,
        GroupingRule::Nothing
    );
}

#[test]
fn sdk_fingerprints_expand_default() {
    let grouper = Grouper::default();
    let plain = cart_crash(10, "index.android.bundle");
    let default = grouper.fingerprint(&plain);
    for alone in ["{{ default }}", "{{default}}", " {{  default }} "] {
        let mut event = plain.clone();
        event.fingerprint = vec![alone.into()];
        assert_eq!(grouper.fingerprint(&event), default, "{alone}");
    }
    let mut split = plain.clone();
    split.fingerprint = vec!["{{ default }}".into(), "tenant-a".into()];
    let print = grouper.fingerprint(&split);
    assert_eq!(print.rule, GroupingRule::SdkFingerprint);
    assert_eq!(
        print.components[..default.components.len()],
        default.components[..]
    );
    assert_eq!(
        print.components.last().map(String::as_str),
        Some("tenant-a")
    );
    assert_ne!(print.hash, default.hash);

    let mut custom = event("Other", "other", vec![]);
    custom.fingerprint = vec!["checkout-timeout".into()];
    let mut custom_too = plain.clone();
    custom_too.fingerprint = vec!["checkout-timeout".into()];
    assert_eq!(
        grouper.fingerprint(&custom).hash,
        grouper.fingerprint(&custom_too).hash
    );
}

#[test]
fn project_rules_win_over_the_sdk() {
    let config = GroupingConfig {
        fingerprints: vec![
            FingerprintRule {
                name: "chunks".into(),
                exception_type: Some("ChunkLoadError".into()),
                message: None,
                tag: None,
                fingerprint: vec!["chunk-load".into()],
            },
            FingerprintRule {
                name: "legacy".into(),
                exception_type: None,
                message: None,
                tag: Some("screen=Legacy*".into()),
                fingerprint: vec!["{{ default }}".into(), "legacy".into()],
            },
        ],
        ..GroupingConfig::default()
    };
    let grouper = Grouper::new(&config).unwrap();
    let mut chunk = event("ChunkLoadError", "Loading chunk 7 failed", vec![]);
    chunk.fingerprint = vec!["sdk-says".into()];
    let print = grouper.fingerprint(&chunk);
    assert_eq!(
        print.rule,
        GroupingRule::ProjectRule {
            name: "chunks".into()
        }
    );
    assert_eq!(print.components, ["chunk-load"]);

    let mut legacy = cart_crash(10, "index.android.bundle");
    legacy.tags.push(Tag {
        key: "screen".into(),
        value: "LegacyCart".into(),
    });
    let print = grouper.fingerprint(&legacy);
    assert_eq!(
        print.rule,
        GroupingRule::ProjectRule {
            name: "legacy".into()
        }
    );
    assert_eq!(print.components.len(), 4);
}

#[test]
fn culprit_is_the_innermost_in_app_frame() {
    let grouper = Grouper::default();
    let crash = cart_crash(10, "index.android.bundle");
    assert_eq!(
        grouper.culprit(&crash).as_deref(),
        Some("handlePress @ screens/Cart")
    );
    let message = ErrorEvent {
        transaction: Some("CheckoutScreen".into()),
        ..ErrorEvent::default()
    };
    assert_eq!(grouper.culprit(&message).as_deref(), Some("CheckoutScreen"));
}

#[test]
fn hashes_print_and_parse_as_32_hex_digits() {
    let hash = FingerprintHash::of(&["a", "bc"]);
    assert_ne!(hash, FingerprintHash::of(&["ab", "c"]));
    let text = hash.to_string();
    assert_eq!(text.len(), 32);
    assert_eq!(text.parse::<FingerprintHash>().unwrap(), hash);
    let json = serde_json::to_string(&hash).unwrap();
    assert_eq!(
        serde_json::from_str::<FingerprintHash>(&json).unwrap(),
        hash
    );
    assert!("xyz".parse::<FingerprintHash>().is_err());
}
