//! Sentry's envelope framing: a JSON header line, then items, each a JSON header line and a
//! payload. With `length` in the item header the payload is exactly that many bytes (and may
//! contain newlines); without it, the payload runs to the next newline or the end.

use serde::Deserialize;
use serde_json::Value;

/// Why an envelope cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    /// The body is empty.
    #[error("empty envelope")]
    Empty,
    /// A header line is not a JSON object.
    #[error("{what} header is not valid JSON: {reason}")]
    Header {
        /// Which header.
        what: String,
        /// The JSON error.
        reason: String,
    },
    /// More items than a request may carry.
    #[error("more than {0} items in one envelope")]
    TooManyItems(usize),
    /// An item says it is longer than what is left.
    #[error("item {index} declares {length} bytes but only {left} remain")]
    Truncated {
        /// The item's position.
        index: usize,
        /// The declared length.
        length: usize,
        /// What the body still had.
        left: usize,
    },
}

/// The envelope's own header.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct EnvelopeHeader {
    /// The event id, for envelopes that carry an event.
    #[serde(default)]
    pub event_id: Option<String>,
    /// When the SDK sent it.
    #[serde(default)]
    pub sent_at: Option<Value>,
    /// The DSN, when the SDK puts it here.
    #[serde(default)]
    pub dsn: Option<String>,
}

/// An item's header.
#[derive(Debug, Deserialize, PartialEq)]
pub struct ItemHeader {
    /// `event`, `transaction`, `session`, `sessions`, `client_report`, `attachment`, ...
    #[serde(rename = "type")]
    pub item_type: String,
    /// The payload's length, when the SDK states it.
    #[serde(default)]
    pub length: Option<usize>,
    /// The attachment's file name.
    #[serde(default)]
    pub filename: Option<String>,
}

/// One item.
#[derive(Debug, PartialEq)]
pub struct Item<'a> {
    /// Its header.
    pub header: ItemHeader,
    /// Its payload.
    pub payload: &'a [u8],
}

/// A parsed envelope, borrowing the body.
#[derive(Debug, PartialEq)]
pub struct Envelope<'a> {
    /// The envelope header.
    pub header: EnvelopeHeader,
    /// The items, in order.
    pub items: Vec<Item<'a>>,
}

fn line(body: &[u8]) -> (&[u8], &[u8]) {
    match body.iter().position(|&b| b == b'\n') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[]),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    bytes.trim_ascii()
}

/// Parses an envelope of at most `max_items` items (an item costs a header line, so a few bytes
/// each; the cap keeps a small body from becoming millions of them).
pub fn parse(body: &[u8], max_items: usize) -> Result<Envelope<'_>, EnvelopeError> {
    if trim(body).is_empty() {
        return Err(EnvelopeError::Empty);
    }
    let (first, mut rest) = line(body);
    let header: EnvelopeHeader =
        serde_json::from_slice(trim(first)).map_err(|e| EnvelopeError::Header {
            what: "envelope".into(),
            reason: e.to_string(),
        })?;
    let mut items = Vec::new();
    loop {
        // Blank lines between items are tolerated.
        while let Some(r) = rest
            .strip_prefix(b"\n")
            .or_else(|| rest.strip_prefix(b"\r\n"))
        {
            rest = r;
        }
        if rest.is_empty() {
            break;
        }
        let index = items.len();
        if index == max_items {
            return Err(EnvelopeError::TooManyItems(max_items));
        }
        let (head, after) = line(rest);
        let item_header: ItemHeader =
            serde_json::from_slice(trim(head)).map_err(|e| EnvelopeError::Header {
                what: format!("item {index}"),
                reason: e.to_string(),
            })?;
        let payload;
        match item_header.length {
            Some(length) => {
                if length > after.len() {
                    return Err(EnvelopeError::Truncated {
                        index,
                        length,
                        left: after.len(),
                    });
                }
                payload = &after[..length];
                rest = &after[length..];
                rest = rest.strip_prefix(b"\n").unwrap_or(rest);
            }
            None => {
                let (p, r) = line(after);
                payload = p.strip_suffix(b"\r").unwrap_or(p);
                rest = r;
            }
        }
        items.push(Item {
            header: item_header,
            payload,
        });
    }
    Ok(Envelope { header, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_framings() {
        let body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n\
            {\"type\":\"attachment\",\"length\":10,\"filename\":\"a.txt\"}\n\xef\xbb\xbfHello\r\n\n\
            {\"type\":\"event\"}\n{\"message\":\"hi\"}\n\
            {\"type\":\"session\"}\n{\"sid\":\"x\"}";
        let env = parse(body, 10).unwrap();
        assert_eq!(parse(body, 2).unwrap_err(), EnvelopeError::TooManyItems(2));
        assert_eq!(
            env.header.event_id.as_deref(),
            Some("9ec79c33ec9942ab8353589fcb2e04dc")
        );
        assert_eq!(env.items.len(), 3);
        assert_eq!(env.items[0].payload, b"\xef\xbb\xbfHello\r\n");
        assert_eq!(env.items[1].header.item_type, "event");
        assert_eq!(env.items[1].payload, b"{\"message\":\"hi\"}");
        assert_eq!(env.items[2].payload, b"{\"sid\":\"x\"}");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(parse(b"", 10).unwrap_err(), EnvelopeError::Empty);
        assert!(matches!(
            parse(b"not json\n", 10).unwrap_err(),
            EnvelopeError::Header { .. }
        ));
        assert!(matches!(
            parse(b"{}\n{\"type\":\"event\",\"length\":100}\n{}", 10).unwrap_err(),
            EnvelopeError::Truncated {
                index: 0,
                length: 100,
                left: 2
            }
        ));
        assert!(matches!(
            parse(b"{}\n{\"length\":1}\nx", 10).unwrap_err(),
            EnvelopeError::Header { .. }
        ));
    }
}
