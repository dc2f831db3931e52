//! Reading a request's list of events without building more than the limit allows: a few
//! kilobytes of compressed `[0,0,0,...]` must not become millions of parsed items before the
//! events-per-request check.

use std::cell::Cell;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error, SeqAccess, Visitor};

/// The start of the error message a capped list fails with.
pub const TOO_MANY: &str = "too many events in one request";

thread_local! {
    /// Set by a [`Capped`] list that held too many elements. Deserializing is synchronous, so
    /// [`read`] knows the error it got came from a capped list by this flag, not by the
    /// error's text.
    static TRIPPED: Cell<bool> = const { Cell::new(false) };
}

/// A list that fails as soon as it holds more than `max` elements.
pub struct Capped<T> {
    max: usize,
    _element: PhantomData<T>,
}

impl<T> Capped<T> {
    /// A list of at most `max` elements.
    pub fn new(max: usize) -> Self {
        Capped {
            max,
            _element: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Capped<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Capped<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a list of at most {} events", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(1024));
        while let Some(element) = seq.next_element()? {
            if out.len() == self.max {
                TRIPPED.set(true);
                return Err(A::Error::custom(format!(
                    "{TOO_MANY}: the limit is {}",
                    self.max
                )));
            }
            out.push(element);
        }
        Ok(out)
    }
}

/// Reads `body` with `seed` (which holds [`Capped`] lists). More elements than allowed is a 413;
/// any other JSON error a 400 saying what the body should have been.
pub fn read<'de, S: DeserializeSeed<'de>>(
    body: &'de [u8],
    seed: S,
    expected: &str,
) -> Result<S::Value, crate::accept::IngestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    TRIPPED.set(false);
    seed.deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| {
            if TRIPPED.replace(false) {
                crate::accept::IngestError::TooLarge(e.to_string())
            } else {
                crate::accept::IngestError::BadRequest(format!("body is not {expected}: {e}"))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn stops_at_the_limit_without_reading_on() {
        let mut de = serde_json::Deserializer::from_str("[1, 2, 3]");
        assert_eq!(
            Capped::<u8>::new(3).deserialize(&mut de).unwrap(),
            vec![1, 2, 3]
        );
        let body = format!("[{}0]", "0,".repeat(100_000));
        let err = read(body.as_bytes(), Capped::<&RawValue>::new(10), "a list").unwrap_err();
        assert!(
            matches!(&err, crate::accept::IngestError::TooLarge(m) if m.starts_with(TOO_MANY)),
            "{err:?}"
        );
        // Any other error is a bad request, and the next read starts clean.
        let err = read(b"[1, 2", Capped::<u8>::new(10), "a list").unwrap_err();
        assert!(
            matches!(&err, crate::accept::IngestError::BadRequest(m) if m.starts_with("body is not a list")),
            "{err:?}"
        );
    }
}
