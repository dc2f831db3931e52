//! trellis sinks: read the processed topics and write Parquet files and ClickHouse tables.
//! (Being built: see ARCHITECTURE.md for the plan.)
#![warn(missing_docs)]
