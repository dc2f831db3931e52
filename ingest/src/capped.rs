//! Reading a request's list of events without building more than the limit allows: a few
//! kilobytes of compressed `[0,0,0,...]` must not become millions of parsed items before the
//! events-per-request check.

use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error, SeqAccess, Visitor};

/// The start of the error message a capped list fails with; callers answer it with 413.
pub const TOO_MANY: &str = "too many events in one request";

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
    seed.deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| {
            if is_too_many(&e) {
                crate::accept::IngestError::TooLarge(e.to_string())
            } else {
                crate::accept::IngestError::BadRequest(format!("body is not {expected}: {e}"))
            }
        })
}

/// Whether a JSON error came from a [`Capped`] list.
pub fn is_too_many(e: &serde_json::Error) -> bool {
    e.to_string().starts_with(TOO_MANY)
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
        let mut de = serde_json::Deserializer::from_str(&body);
        let err = Capped::<&RawValue>::new(10)
            .deserialize(&mut de)
            .unwrap_err();
        assert!(is_too_many(&err), "{err}");
    }
}
