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
use apache_avro::{AvroSchema, GenericSingleObjectReader, Schema};
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
    reader: GenericSingleObjectReader,
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
                let reader = GenericSingleObjectReader::new(schema.clone())
                    .expect("a parsed schema resolves");
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
    let value = codec(kind).reader.read_value(&mut reader).map_err(datum)?;
    if !reader.is_empty() {
        return Err(CodecError::TrailingBytes {
            kind,
            left: reader.len(),
        });
    }
    apache_avro::from_value(&value).map_err(datum)
}
