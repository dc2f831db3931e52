//! Avro schemas and the bus payload codec.
//!
//! Every bus payload is one event in Avro's *single-object encoding*: the two bytes `C3 01`, the
//! 8-byte CRC-64-AVRO (Rabin) fingerprint of the writer's schema, then the Avro binary datum. The
//! fingerprint says which kind (and which version of its schema) a payload holds, so a consumer
//! needs no side channel, and a payload written with an unknown schema is rejected by name.
//!
//! The schemas used at run time are the `.avsc` files under `schemas/avro/`, compiled in. They
//! are generated from the types in [`crate::model`] (`trellis schema export`), and a test fails
//! if a file and its type drift apart.

use std::sync::OnceLock;

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::{AvroSchema, Schema};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{
    AnalyticsEvent, ErrorEvent, Event, Kind, Notification, PerformanceSample, SessionUpdate,
    Transaction,
};

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload is shorter than the single-object header.
    #[error("payload of {len} bytes is too short for an Avro single-object header")]
    Truncated {
        /// The payload's length.
        len: usize,
    },
    /// The payload does not start with the single-object marker `C3 01`.
    #[error("payload does not start with the Avro single-object marker C3 01")]
    NotSingleObject,
    /// The fingerprint names no schema this build knows.
    #[error("unknown writer schema fingerprint {0:016x}")]
    UnknownSchema(u64),
    /// The datum does not match its schema.
    #[error("{kind} payload does not match its schema: {source}")]
    Datum {
        /// The kind the fingerprint named.
        kind: Kind,
        /// What Avro reported.
        #[source]
        source: Box<apache_avro::Error>,
    },
    /// Bytes follow the datum: the payload was cut or glued to another.
    #[error("{kind} payload has {left} bytes after its datum")]
    TrailingBytes {
        /// The kind the fingerprint named.
        kind: Kind,
        /// How many bytes were left over.
        left: usize,
    },
    /// A derived record (session, health partial) does not match its schema.
    #[error("{record} payload does not match its schema: {source}")]
    Record {
        /// The record type's name.
        record: &'static str,
        /// What Avro reported.
        #[source]
        source: Box<apache_avro::Error>,
    },
    /// Bytes follow a derived record's datum.
    #[error("{record} payload has {left} bytes after its datum")]
    RecordTrailingBytes {
        /// The record type's name.
        record: &'static str,
        /// How many bytes were left over.
        left: usize,
    },
    /// The event cannot be written with its schema (a bug: the types and schemas disagree).
    #[error("{kind} event cannot be encoded: {source}")]
    Encode {
        /// The event's kind.
        kind: Kind,
        /// What Avro reported.
        #[source]
        source: Box<apache_avro::Error>,
    },
}

/// The `.avsc` text of each kind, as committed under `schemas/avro/`.
pub fn avsc(kind: Kind) -> &'static str {
    match kind {
        Kind::Analytics => include_str!("../avro/analytics.avsc"),
        Kind::Error => include_str!("../avro/error.avsc"),
        Kind::Performance => include_str!("../avro/performance.avsc"),
        Kind::Transaction => include_str!("../avro/transaction.avsc"),
        Kind::Session => include_str!("../avro/session.avsc"),
        Kind::Notification => include_str!("../avro/notification.avsc"),
    }
}

/// The Avro schema derived from the Rust type of each kind (what `.avsc` files are made from).
pub fn derived_schema(kind: Kind) -> Schema {
    match kind {
        Kind::Analytics => AnalyticsEvent::get_schema(),
        Kind::Error => ErrorEvent::get_schema(),
        Kind::Performance => PerformanceSample::get_schema(),
        Kind::Transaction => Transaction::get_schema(),
        Kind::Session => SessionUpdate::get_schema(),
        Kind::Notification => Notification::get_schema(),
    }
}

/// The `.avsc` text a kind's type implies, pretty-printed, as `trellis schema export` writes it.
pub fn derived_avsc(kind: Kind) -> String {
    let schema = derived_schema(kind);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}

struct KindCodec {
    kind: Kind,
    schema: Schema,
    header: [u8; 10],
    reader: apache_avro_decode::GenericSingleObjectReader,
}

/// The reader of a schema's single-object payloads: apache-avro 0.22, which deserializes the datum
/// straight into the Rust type instead of building a `Value` tree first (see `Cargo.toml`).
pub(crate) fn decoder(name: &str, avsc: &str) -> apache_avro_decode::GenericSingleObjectReader {
    let schema = apache_avro_decode::Schema::parse_str(avsc)
        .unwrap_or_else(|e| panic!("schemas/avro/{name}.avsc is not valid Avro: {e}"));
    apache_avro_decode::GenericSingleObjectReader::builder()
        .schema(schema)
        .build()
        .expect("a parsed schema resolves")
}

/// A decoding error as the type [`CodecError`] carries (apache-avro 0.21's), with its message.
pub(crate) fn decode_error(e: apache_avro_decode::Error) -> apache_avro::Error {
    <apache_avro::Error as serde::de::Error>::custom(e)
}

fn codecs() -> &'static [KindCodec] {
    static CODECS: OnceLock<Vec<KindCodec>> = OnceLock::new();
    CODECS.get_or_init(|| {
        Kind::ALL
            .iter()
            .map(|&kind| {
                let schema = Schema::parse_str(avsc(kind))
                    .unwrap_or_else(|e| panic!("schemas/avro/{kind}.avsc is not valid Avro: {e}"));
                let header: [u8; 10] = RabinFingerprintHeader::from_schema(&schema)
                    .build_header()
                    .try_into()
                    .expect("a Rabin single-object header is 10 bytes");
                let reader = decoder(kind.as_str(), avsc(kind));
                KindCodec {
                    kind,
                    schema,
                    header,
                    reader,
                }
            })
            .collect()
    })
}

fn codec(kind: Kind) -> &'static KindCodec {
    &codecs()[Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind has a codec")]
}

/// The Avro schema of a kind, as used on the bus.
pub fn schema(kind: Kind) -> &'static Schema {
    &codec(kind).schema
}

/// The single-object fingerprint of a kind's bus schema.
pub fn fingerprint(kind: Kind) -> u64 {
    u64::from_le_bytes(codec(kind).header[2..].try_into().expect("8 bytes"))
}

/// Encodes an event as an Avro single-object payload.
pub fn encode(event: &Event) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(512);
    encode_into(event, &mut buf)?;
    Ok(buf)
}

/// Encodes an event as an Avro single-object payload, appending to `buf`.
pub fn encode_into(event: &Event, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    match event {
        Event::Analytics(e) => write(Kind::Analytics, e, buf),
        Event::Error(e) => write(Kind::Error, e, buf),
        Event::Performance(e) => write(Kind::Performance, e, buf),
        Event::Transaction(e) => write(Kind::Transaction, e, buf),
        Event::Session(e) => write(Kind::Session, e, buf),
        Event::Notification(e) => write(Kind::Notification, e, buf),
    }
}

fn write<T: Serialize>(kind: Kind, value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    let codec = codec(kind);
    buf.extend_from_slice(&codec.header);
    apache_avro::write_avro_datum_ref(&codec.schema, value, buf).map_err(|e| {
        CodecError::Encode {
            kind,
            source: Box::new(e),
        }
    })?;
    Ok(())
}

/// The kind a payload holds, from its header alone.
pub fn peek_kind(payload: &[u8]) -> Result<Kind, CodecError> {
    if payload.len() < 10 {
        return Err(CodecError::Truncated { len: payload.len() });
    }
    if payload[..2] != [0xC3, 0x01] {
        return Err(CodecError::NotSingleObject);
    }
    codecs()
        .iter()
        .find(|c| c.header[..] == payload[..10])
        .map(|c| c.kind)
        .ok_or_else(|| {
            CodecError::UnknownSchema(u64::from_le_bytes(
                payload[2..10].try_into().expect("8 bytes"),
            ))
        })
}

/// Decodes an Avro single-object payload into an event.
pub fn decode(payload: &[u8]) -> Result<Event, CodecError> {
    let kind = peek_kind(payload)?;
    Ok(match kind {
        Kind::Analytics => Event::Analytics(read(kind, payload)?),
        Kind::Error => Event::Error(read(kind, payload)?),
        Kind::Performance => Event::Performance(read(kind, payload)?),
        Kind::Transaction => Event::Transaction(read(kind, payload)?),
        Kind::Session => Event::Session(read(kind, payload)?),
        Kind::Notification => Event::Notification(read(kind, payload)?),
    })
}

fn read<T: DeserializeOwned>(kind: Kind, payload: &[u8]) -> Result<T, CodecError> {
    let datum = |source| CodecError::Datum {
        kind,
        source: Box::new(source),
    };
    let mut reader = payload;
    let value = codec(kind)
        .reader
        .read_deser(&mut reader)
        .map_err(|e| datum(decode_error(e)))?;
    if !reader.is_empty() {
        return Err(CodecError::TrailingBytes {
            kind,
            left: reader.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample;

    /// apache-avro 0.21's reading, which the decoder replaced: the `Value` tree, then serde.
    fn decode_by_value(payload: &[u8]) -> Result<Event, String> {
        let kind = peek_kind(payload).map_err(|e| e.to_string())?;
        let reader = apache_avro::GenericSingleObjectReader::new(schema(kind).clone()).unwrap();
        let mut rest = payload;
        let value = reader.read_value(&mut rest).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after", rest.len()));
        }
        fn from<T: DeserializeOwned>(value: &apache_avro::types::Value) -> Result<T, String> {
            apache_avro::from_value(value).map_err(|e| e.to_string())
        }
        Ok(match kind {
            Kind::Analytics => Event::Analytics(from(&value)?),
            Kind::Error => Event::Error(from(&value)?),
            Kind::Performance => Event::Performance(from(&value)?),
            Kind::Transaction => Event::Transaction(from(&value)?),
            Kind::Session => Event::Session(from(&value)?),
            Kind::Notification => Event::Notification(from(&value)?),
        })
    }

    fn payloads() -> Vec<(Event, Vec<u8>)> {
        (0..120)
            .map(|n| sample::event("p", n % 7, n))
            .map(|e| {
                let payload = encode(&e).unwrap();
                (e, payload)
            })
            .collect()
    }

    #[test]
    fn decoding_agrees_with_the_value_reader_for_every_kind() {
        let payloads = payloads();
        for kind in Kind::ALL {
            assert!(payloads.iter().any(|(e, _)| e.kind() == kind), "{kind}");
        }
        for (event, payload) in &payloads {
            assert_eq!(&decode(payload).unwrap(), event);
            assert_eq!(&decode_by_value(payload).unwrap(), event);
        }
    }

    /// Every datum byte of one payload per kind replaced by values that make bad lengths, union
    /// branches, enum symbols and UTF-8, and every payload cut short: what the `Value` reader
    /// rejects, the decoder rejects; what both accept, they read as the same event.
    #[test]
    fn corrupt_datums_fail_or_pass_as_with_the_value_reader() {
        let payloads = payloads();
        let mut checked = 0;
        let mut lenient = 0;
        for kind in Kind::ALL {
            let (_, good) = payloads.iter().find(|(e, _)| e.kind() == kind).unwrap();
            let mut variants: Vec<Vec<u8>> = (10..good.len()).map(|n| good[..n].to_vec()).collect();
            for i in 10..good.len() {
                for byte in [0x00, 0x01, 0x02, 0x0b, 0x7f, 0x80, 0xc3, 0xff] {
                    let mut bad = good.clone();
                    bad[i] = byte;
                    variants.push(bad);
                }
            }
            for payload in variants {
                let new = decode(&payload);
                let old = decode_by_value(&payload);
                match (&new, &old) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    // apache-avro 0.21 reads the end of the input where a union's branch
                    // should be as its null branch, so it accepted payloads cut before optional
                    // fields (or inside a union's index) and filled them with `None`. The
                    // decoder rejects those: the event read does not encode back to the payload.
                    (Err(_), Ok(event)) if encode(event).unwrap() != payload => {
                        lenient += 1;
                    }
                    _ => panic!("{kind}: decoder {new:?}, value reader {old:?}, {payload:02x?}"),
                }
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
        assert!(lenient > 0, "no payload was cut at a union");
    }
}
