//! The trellis event model and the schemas that follow from it.
//!
//! Everything trellis moves is one of the event kinds in [`model`]. From those Rust types come:
//! - the Avro schemas of bus payloads ([`avro`], committed as `schemas/avro/*.avsc`), with the
//!   codec every producer and consumer uses;
//! - the Arrow schemas of the Parquet tables ([`arrow`]);
//! - the ClickHouse DDL ([`clickhouse`]).
//!
//! This crate imports no other trellis crate; all of them import it.
#![warn(missing_docs)]

pub mod arrow;
pub mod avro;
pub mod clickhouse;
pub mod model;
pub mod sample;

pub use model::*;
