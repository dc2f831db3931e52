//! Normalization of frames, paths and messages.

use super::*;

fn key(function: Option<&str>, filename: Option<&str>, module: Option<&str>) -> FrameKey {
    frame_key(&Frame {
        function: function.map(Into::into),
        filename: filename.map(Into::into),
        module: module.map(Into::into),
        lineno: Some(12),
        colno: Some(34),
        ..Frame::default()
    })
}

fn code(function: Option<&str>, location: Option<&str>) -> FrameKey {
    FrameKey::Code {
        function: function.map(Into::into),
        location: location.map(Into::into),
    }
}

#[test]
fn hermes_and_bundle_frames_lose_their_noise() {
    let bundles = [
        "index.android.bundle",
        "address at index.android.bundle:1:234567",
        "app:///index.android.bundle",
        "app:///main.jsbundle",
        "/data/user/0/com.plantapp/files/.expo-internal/3f2a9c1e-0b6d-4c1a-9e2f-5d8c7b6a5f4e/bundle",
        "file:///var/mobile/Containers/Data/Application/0A1B/Library/Application Support/.expo-internal/updates/3f2a9c1e-0b6d-4c1a-9e2f-5d8c7b6a5f4e/app.bundle",
        "file:///data/user/0/com.plantapp/files/3f2a9c1e-0b6d-4c1a-9e2f-5d8c7b6a5f4e.bundle",
        "http://localhost:8081/index.bundle?platform=ios&dev=true&minify=false",
        "https://cdn.example.com/static/js/chunk-3f2a9c.js",
        "https://cdn.example.com/static/js/main.4f3a2b1c.js",
        "https://cdn.example.com/static/js/787.a1b2c3d4.chunk.js",
        "index.android.bundle.hbc",
    ];
    for bundle in bundles {
        assert_eq!(normalize_path(bundle), None, "{bundle}");
        assert_eq!(
            key(Some("handlePress"), Some(bundle), None),
            code(Some("handlePress"), None)
        );
    }
    for anonymous in [
        "anonymous",
        "<anonymous>",
        "?anon_0_",
        "t",
        "Xe",
        "Object.<anonymous>",
        "global code",
    ] {
        assert_eq!(normalize_function(anonymous, false), None, "{anonymous}");
        assert_eq!(
            key(Some(anonymous), Some("index.android.bundle"), None).component(),
            None
        );
    }
    // In a bundle, two lower-case letters are a minifier's too; in a source file, a name.
    assert_eq!(
        key(Some("tn"), Some("main.jsbundle"), None).component(),
        None
    );
    assert_eq!(
        key(Some("on"), Some("src/events.ts"), None),
        code(Some("on"), Some("src/events"))
    );
    assert_eq!(
        key(Some("forEach"), Some("[native code]"), None),
        FrameKey::Native
    );
}

#[test]
fn function_names_keep_what_is_stable() {
    let f = |raw| normalize_function(raw, false).map(Cow::into_owned);
    assert_eq!(f("?anon_0_handlePress").as_deref(), Some("handlePress"));
    assert_eq!(f("async handlePress").as_deref(), Some("handlePress"));
    assert_eq!(f("Object.handlePress").as_deref(), Some("handlePress"));
    assert_eq!(f("t.value").as_deref(), Some("value"));
    assert_eq!(
        f("CartScreen.prototype.render").as_deref(),
        Some("CartScreen.render")
    );
    assert_eq!(f("lambda$onCreate$0").as_deref(), Some("lambda$onCreate$"));
    assert_eq!(f("<module>").as_deref(), Some("<module>"));
    assert_eq!(f("on").as_deref(), Some("on"));
}

#[test]
fn paths_keep_two_segments_without_hashes_or_lines() {
    let p = |raw| normalize_path(raw);
    assert_eq!(
        p("app:///src/screens/Cart.tsx").as_deref(),
        Some("screens/Cart")
    );
    assert_eq!(
        p("webpack:///./src/screens/Cart.tsx").as_deref(),
        Some("screens/Cart")
    );
    assert_eq!(
        p("/Users/ci/app/src/screens/Cart.tsx:42:7").as_deref(),
        Some("screens/Cart")
    );
    assert_eq!(
        p("C:\\build\\src\\screens\\Cart.js").as_deref(),
        Some("screens/Cart")
    );
    assert_eq!(
        p("/srv/releases/20240101120000/app/billing.py").as_deref(),
        Some("app/billing")
    );
    assert_eq!(
        p("static/Cart-4f3a2b1c.css").as_deref(),
        Some("static/Cart")
    );
    assert_eq!(p("<frozen importlib._bootstrap>"), None);
    assert_eq!(
        key(
            Some("charge"),
            Some("billing.py"),
            Some("app.services.billing$1")
        ),
        code(Some("charge"), Some("app.services.billing$"))
    );
}

#[test]
fn hashes_are_told_from_words() {
    for hash in [
        "3f2a9c1",
        "e3b0c44298fc1c14",
        "3f2a9c1e-0b6d-4c1a-9e2f-5d8c7b6a5f4e",
        "k2j4h5g6",
    ] {
        assert!(is_hash_like(hash), "{hash}");
    }
    for word in [
        "facade",
        "deadbeef",
        "Checkout",
        "ExceptionsManager",
        "1234567",
        "v2",
        "index2",
    ] {
        assert!(!is_hash_like(word), "{word}");
    }
}

#[test]
fn messages_lose_their_dynamic_parts() {
    let cases = [
        ("User 4821 not found", "User <n> not found"),
        ("Timeout after 3012ms", "Timeout after <n>ms"),
        (
            "Network request failed: https://api.example.com/v2/plants/8812?token=abc",
            "Network request failed: <url>",
        ),
        (
            "no account for jane.doe+1@example.com",
            "no account for <email>",
        ),
        (
            "order 3f2a9c1e-0b6d-4c1a-9e2f-5d8c7b6a5f4e missing",
            "order <uuid> missing",
        ),
        ("segfault at 0x7ffee3b0c442", "segfault at <addr>"),
        ("cannot reach 10.0.3.17", "cannot reach <ip>"),
        ("KeyError: 'missing'", "KeyError: <quoted>"),
        (
            "Cannot read property \"id\" of undefined",
            "Cannot read property <quoted> of undefined",
        ),
        ("can't find user's cart", "can't find user's cart"),
        ("commit e3b0c44298fc not found", "commit <hash> not found"),
        ("no row for user4821", "no row for user<n>"),
        ("Timeout after 30000000ms", "Timeout after <n>ms"),
        ("  two\n  lines  ", "two"),
        (
            "Invariant Violation: x\n\nThis error is located at:\n in Cart",
            "Invariant Violation: x",
        ),
    ];
    for (raw, normalized) in cases {
        assert_eq!(normalize_message(raw), normalized, "{raw}");
    }
    let long = "word ".repeat(200);
    assert_eq!(normalize_message(&long).chars().count(), MAX_MESSAGE_CHARS);
}
