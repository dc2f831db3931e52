//! Normalization of what varies between occurrences of one bug: line and column numbers,
//! addresses, hashes, bundle and chunk names, OTA-update paths, minified and anonymous
//! JavaScript names, and the dynamic parts of messages.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use trellis_schemas::Frame;

/// Messages are cut to this many characters after normalization.
const MAX_MESSAGE_CHARS: usize = 256;

/// What a frame contributes to grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameKey {
    /// Engine plumbing (`[native code]`): left out.
    Native,
    /// The function and the module or file, whichever survived normalization; both `None` when
    /// the frame carries nothing stable (an anonymous function in a bundle).
    Code {
        function: Option<String>,
        location: Option<String>,
    },
}

impl FrameKey {
    /// The frame as one grouping component, or `None` when it carries nothing stable.
    pub(crate) fn component(&self) -> Option<String> {
        match self {
            FrameKey::Code {
                function: Some(f),
                location: Some(l),
            } => Some(format!("frame:{f}@{l}")),
            FrameKey::Code {
                function: Some(f),
                location: None,
            } => Some(format!("frame:{f}")),
            FrameKey::Code {
                function: None,
                location: Some(l),
            } => Some(format!("frame:@{l}")),
            _ => None,
        }
    }

    /// Whether the frame kept a module or file.
    pub(crate) fn has_location(&self) -> bool {
        matches!(
            self,
            FrameKey::Code {
                location: Some(_),
                ..
            }
        )
    }

    /// The frame as `function @ location` for people, or `None` when it carries nothing stable.
    pub(crate) fn display(&self) -> Option<String> {
        match self {
            FrameKey::Code {
                function: Some(f),
                location: Some(l),
            } => Some(format!("{f} @ {l}")),
            FrameKey::Code {
                function: Some(f),
                location: None,
            } => Some(f.clone()),
            FrameKey::Code {
                function: None,
                location: Some(l),
            } => Some(l.clone()),
            _ => None,
        }
    }
}

/// Normalizes one frame: its function name and its module (or else its file).
pub(crate) fn frame_key(frame: &Frame) -> FrameKey {
    let is_native = |value: &Option<String>| value.as_deref().is_some_and(is_native_location);
    if is_native(&frame.filename) || is_native(&frame.abs_path) || is_native(&frame.module) {
        return FrameKey::Native;
    }
    // The module names the code where there is one (Python, JVM); else the file does.
    let (location, in_bundle) = match frame.module.as_deref().map(str::trim) {
        Some(module) if !module.is_empty() && !module.contains('/') => {
            (normalize_module(module), false)
        }
        Some(module) if !module.is_empty() => (normalize_path(module), false),
        _ => match frame
            .filename
            .as_deref()
            .or(frame.abs_path.as_deref())
            .map(classify_path)
        {
            Some(PathKey::Source(location)) => (Some(location), false),
            Some(PathKey::Bundle) => (None, true),
            Some(PathKey::Nothing) | None => (None, false),
        },
    };
    let function = frame
        .function
        .as_deref()
        .and_then(|function| normalize_function(function, in_bundle))
        .map(Cow::into_owned);
    FrameKey::Code { function, location }
}

fn is_native_location(value: &str) -> bool {
    let value = value.trim();
    value == "[native code]" || value == "native" || value == "<native>"
}

/// Function names that only say "anonymous" or "top level", in the spellings of Hermes, V8,
/// JavaScriptCore and SpiderMonkey.
const ANONYMOUS: &[&str] = &[
    "anonymous",
    "<anonymous>",
    "(anonymous)",
    "(anonymous function)",
    "anonymous function",
    "<unknown>",
    "?",
    "global",
    "global code",
    "eval",
    "eval code",
    "module code",
];

/// Segments of dotted JavaScript names that say nothing about the function.
const NOISE_SEGMENTS: &[&str] = &["Object", "Module", "exports", "prototype", "<computed>"];

/// Normalizes a function name; `None` when nothing stable is left. `in_bundle`: the frame is
/// from an unsymbolicated bundle, where every name of one or two characters is a minifier's.
pub(crate) fn normalize_function(raw: &str, in_bundle: bool) -> Option<Cow<'_, str>> {
    let mut name = raw.trim();
    for prefix in ["address at ", "async ", "new ", "bound ", "*"] {
        name = name.strip_prefix(prefix).unwrap_or(name).trim_start();
    }
    // Hermes names anonymous closures `?anon_0_` followed by the enclosing function's name.
    while let Some(rest) = name.strip_prefix("?anon_") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        name = rest[digits..].strip_prefix('_').unwrap_or(&rest[digits..]);
    }
    if name.is_empty() || ANONYMOUS.contains(&name) {
        return None;
    }
    let name = strip_generated_numbers(name);
    if !name.contains('.') || name.contains(' ') {
        return (!is_minified(&name, in_bundle)).then_some(name);
    }
    let kept: Vec<&str> = name
        .split('.')
        .filter(|segment| {
            !segment.is_empty()
                && !NOISE_SEGMENTS.contains(segment)
                && !ANONYMOUS.contains(segment)
                && !is_minified(segment, in_bundle)
        })
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(Cow::Owned(kept.join(".")))
    }
}

/// Whether a JavaScript identifier looks like a minifier's: one character, or two with an upper
/// case letter, a digit or `$` (`t`, `Xe`, `$t`, `e2`); in a bundle, any two (`tn`). Outside
/// bundles two lower-case letters (`on`, `go`) stay.
fn is_minified(name: &str, in_bundle: bool) -> bool {
    let bytes = name.as_bytes();
    match bytes.len() {
        1 => true,
        2 => {
            let identifier = bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'$' || *b == b'_');
            identifier
                && !bytes[0].is_ascii_digit()
                && (in_bundle || !bytes.iter().all(u8::is_ascii_lowercase))
        }
        _ => false,
    }
}

/// Replaces numbers that compilers generate in names (`lambda$onCreate$0`, `Outer$1`,
/// `$$Lambda$12/0x0000000801234`, addresses) with nothing.
fn strip_generated_numbers(name: &str) -> Cow<'_, str> {
    static GENERATED: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"/0x[0-9a-fA-F]+|\$\d+|\b0x[0-9a-fA-F]+\b").expect("static pattern compiles")
    });
    GENERATED.replace_all(
        name,
        |caps: &Captures| {
            if caps[0].starts_with('$') { "$" } else { "" }
        },
    )
}

/// Normalizes a module name (`com.app.Foo$1`, `app.services.billing`); `None` when nothing is left.
fn normalize_module(module: &str) -> Option<String> {
    let module = strip_generated_numbers(module);
    let module = module.trim_matches('.');
    (!module.is_empty()).then(|| module.to_owned())
}

/// Normalizes a file name, path or URL to its last two segments without extension, dropping
/// schemes, hosts, query strings, line and column suffixes, hashes, UUIDs and numeric segments.
/// Bundles, chunks and OTA-update bundle paths give `None`: their names tell nothing about the
/// code and change with every build and update.
pub(crate) fn normalize_path(raw: &str) -> Option<String> {
    match classify_path(raw) {
        PathKey::Source(location) => Some(location),
        PathKey::Bundle | PathKey::Nothing => None,
    }
}

/// What a file name, path or URL says about the code.
enum PathKey {
    /// A bundle or chunk: nothing about the code.
    Bundle,
    /// Nothing usable (`<anonymous>`, empty).
    Nothing,
    /// A source file, normalized.
    Source(String),
}

fn classify_path(raw: &str) -> PathKey {
    let mut path = raw.trim();
    path = path.strip_prefix("address at ").unwrap_or(path);
    path = path.split(['?', '#']).next().unwrap_or(path);
    if let Some((_, rest)) = path.split_once("://") {
        // Drop the host: `http://localhost:8081/index.bundle`, `webpack://app/./src/x.js`.
        path = rest.split_once('/').map_or("", |(_, rest)| rest);
    }
    path = strip_line_column(path);
    if path.starts_with('<') || path.is_empty() {
        return PathKey::Nothing;
    }
    let path = path.replace('\\', "/");
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != ".." && *s != "~")
        .filter(|s| !is_hash_like(s) && !s.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let Some((basename, dirs)) = segments.split_last() else {
        return PathKey::Nothing;
    };
    if is_bundle(basename) {
        return PathKey::Bundle;
    }
    let stem = strip_extension(basename);
    let stem = strip_hash_parts(stem);
    PathKey::Source(match dirs.last() {
        Some(dir) => format!("{dir}/{stem}"),
        None => stem.into_owned(),
    })
}

/// `index.android.bundle:1:234567` → `index.android.bundle`.
fn strip_line_column(path: &str) -> &str {
    let mut path = path;
    for _ in 0..2 {
        match path.rsplit_once(':') {
            Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
                path = head;
            }
            _ => break,
        }
    }
    path
}

/// Whether a file name is a JavaScript bundle or chunk rather than a source file.
fn is_bundle(basename: &str) -> bool {
    let name = basename.to_ascii_lowercase();
    if name == "bundle"
        || name.ends_with(".bundle")
        || name.ends_with(".jsbundle")
        || name.ends_with(".hbc")
        || name.ends_with(".bundle.js")
    {
        return true;
    }
    let Some(stem) = [".js", ".mjs", ".cjs"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
    else {
        return false;
    };
    stem.starts_with("chunk")
        || stem.ends_with(".chunk")
        || stem.split(['.', '-', '_', '~']).any(is_hash_like)
}

fn strip_extension(basename: &str) -> &str {
    match basename.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 5 => stem,
        _ => basename,
    }
}

/// `Cart.4f3a2b1c` or `Cart-4f3a2b1c` → `Cart`.
fn strip_hash_parts(stem: &str) -> Cow<'_, str> {
    if !stem.split(['.', '-']).any(is_hash_like) {
        return Cow::Borrowed(stem);
    }
    let mut out = String::with_capacity(stem.len());
    for part in stem.split(['.', '-']).filter(|part| !is_hash_like(part)) {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(part);
    }
    Cow::Owned(out)
}

/// Whether a token is a hash or an id: a UUID, or at least 7 hex digits with a digit and a
/// letter among them (`3f2a9c1`, `e3b0c44298fc`), or an 8+ character mix of letters and digits
/// where digits make up a third or more (webpack's `[contenthash]` in base 36).
pub(crate) fn is_hash_like(token: &str) -> bool {
    let bytes = token.as_bytes();
    if bytes.len() == 36 && bytes.iter().filter(|b| **b == b'-').count() == 4 {
        return bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-');
    }
    if bytes.len() < 7 || !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = bytes.len() - digits;
    if digits == 0 || letters == 0 {
        return false;
    }
    bytes.iter().all(u8::is_ascii_hexdigit) || (bytes.len() >= 8 && digits * 3 >= bytes.len())
}

/// Normalizes an exception type: addresses and generated numbers removed.
pub(crate) fn normalize_type(raw: &str) -> Cow<'_, str> {
    strip_generated_numbers(raw.trim())
}

/// Normalizes a message for grouping: its first non-empty line, with URLs, emails, UUIDs,
/// addresses, IPs, hashes, quoted values and numbers replaced by placeholders, whitespace
/// collapsed and the result cut to 256 characters.
pub(crate) fn normalize_message(raw: &str) -> String {
    static NOISE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r#"(?x)
              (?P<url>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'"<>()\[\]{}]+)
            | (?P<email>\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)
            | (?P<uuid>\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b)
            | (?P<addr>\b0[xX][0-9a-fA-F]+\b)
            | (?P<ip>\b\d{1,3}(?:\.\d{1,3}){3}\b)
            | (?P<hash>\b[0-9a-zA-Z]{7,}\b)
            | (?P<quoted>"[^"\n]*"|\B'[^'\n]*'\B|`[^`\n]*`)
            | (?P<number>\d+(?:[.,]\d+)*)
            "#,
        )
        .expect("static pattern compiles")
    });
    let line = raw
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("");
    let replaced = NOISE.replace_all(line, |caps: &Captures| {
        if let Some(hash) = caps.name("hash") {
            let token = hash.as_str();
            return if token.bytes().all(|b| b.is_ascii_digit()) {
                "<n>".to_owned()
            } else if digit_runs(token) > 1 && is_hash_like(token) {
                "<hash>".to_owned()
            } else {
                // A word with a number in it, such as `user4821` or `3012ms`: keep the letters.
                digits_to_placeholder(token)
            };
        }
        let placeholder = if caps.name("url").is_some() {
            "<url>"
        } else if caps.name("email").is_some() {
            "<email>"
        } else if caps.name("uuid").is_some() {
            "<uuid>"
        } else if caps.name("addr").is_some() {
            "<addr>"
        } else if caps.name("ip").is_some() {
            "<ip>"
        } else if caps.name("quoted").is_some() {
            "<quoted>"
        } else {
            "<n>"
        };
        placeholder.to_owned()
    });
    let mut out = String::with_capacity(replaced.len());
    for word in replaced.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if let Some((cut, _)) = out.char_indices().nth(MAX_MESSAGE_CHARS) {
        out.truncate(cut);
    }
    out
}

/// How many separate runs of digits a token has (`user4821`: 1, `a1b2c3`: 3).
fn digit_runs(token: &str) -> usize {
    let bytes = token.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()))
        .count()
}

fn digits_to_placeholder(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    let mut in_digits = false;
    for c in token.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push_str("<n>");
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

#[cfg(test)]
#[path = "normalize_tests.rs"]
mod tests;
