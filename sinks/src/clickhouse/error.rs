//! The sink's errors, and the classification of every ClickHouse failure.

use trellis_bus::BusError;

use crate::ConfigError;

/// Why the ClickHouse sink stopped. Offsets of unwritten batches are never committed, so a
/// restart after any of these resumes without loss.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bus failed in a way that retrying did not fix.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// A migration statement failed.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// The migration's version.
        version: u32,
        /// Its name.
        name: &'static str,
        /// What ClickHouse answered.
        #[source]
        source: clickhouse::error::Error,
    },
    /// A ClickHouse request failed in a way retrying cannot fix (unknown table, bad credentials,
    /// missing privilege, ...).
    #[error("clickhouse refused {what}: {source}")]
    ClickHouse {
        /// The request.
        what: String,
        /// What ClickHouse answered.
        #[source]
        source: clickhouse::error::Error,
    },
    /// Every row of a batch was refused one by one: the table does not match what the sink
    /// writes, and dead-lettering the whole stream would hide that.
    #[error(
        "all {rows} rows for {table} were refused ({reason}); the table does not match the sink"
    )]
    SchemaMismatch {
        /// The table.
        table: &'static str,
        /// Rows refused.
        rows: usize,
        /// The last reason ClickHouse gave.
        reason: String,
    },
}

impl Error {
    /// Whether the server could not be reached or was overloaded, so that waiting may fix it.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::ClickHouse { source, .. } | Error::Migration { source, .. } => {
                classify(source) == Class::Retryable
            }
            _ => false,
        }
    }
}

/// What to do about a failed ClickHouse request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Transient (network, timeout, 5xx, overload): retry the same request with backoff.
    Retryable,
    /// The server refused the data: find the bad rows and dead-letter them.
    BadData,
    /// Configuration or schema: stop the sink and say why.
    Fatal,
}

/// The `Code: N` of a ClickHouse exception text (both the 18.x `Code: 27, e.displayText()` and
/// the current `Code: 27. DB::Exception` forms).
pub fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Server error codes caused by the data in the request.
const BAD_DATA: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    190, // SIZES_OF_ARRAYS_DOESNT_MATCH
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    469, // VIOLATED_CONSTRAINT
];

/// Server error codes that go away by themselves.
const TRANSIENT: &[u32] = &[
    3,   // UNEXPECTED_END_OF_FILE (a cut connection)
    159, // TIMEOUT_EXCEEDED
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    285, // TOO_FEW_LIVE_REPLICAS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];

/// Classifies a failed ClickHouse request.
pub fn classify(error: &clickhouse::error::Error) -> Class {
    use clickhouse::error::Error as E;
    match error {
        E::Network(_) | E::TimedOut | E::Other(_) => Class::Retryable,
        E::BadResponse(text) => classify_response(text),
        _ => Class::Fatal,
    }
}

/// Classifies the text of a refused request: by exception code, else by HTTP status.
pub fn classify_response(text: &str) -> Class {
    match exception_code(text) {
        Some(code) if BAD_DATA.contains(&code) => Class::BadData,
        Some(code) if TRANSIENT.contains(&code) => Class::Retryable,
        Some(_) => Class::Fatal,
        // No exception: a proxy or load balancer answered ("502 Bad Gateway").
        None if text.starts_with('4') => Class::Fatal,
        None => Class::Retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_are_classified_by_code_on_old_and_new_servers() {
        let old = "Code: 27, e.displayText() = DB::Exception: Cannot parse input, e.what() = DB::Exception";
        assert_eq!(exception_code(old), Some(27));
        assert_eq!(classify_response(old), Class::BadData);
        let new = "Code: 117. DB::Exception: Incorrect data. (INCORRECT_DATA) (version 24.8.1.1)";
        assert_eq!(classify_response(new), Class::BadData);
        assert_eq!(
            classify_response("Code: 241. DB::Exception: Memory limit"),
            Class::Retryable
        );
        assert_eq!(
            classify_response("Code: 60. DB::Exception: Table x doesn't exist"),
            Class::Fatal
        );
        assert_eq!(
            classify_response("Code: 516. Authentication failed"),
            Class::Fatal
        );
        assert_eq!(classify_response("502 Bad Gateway"), Class::Retryable);
        assert_eq!(classify_response("403 Forbidden"), Class::Fatal);
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut),
            Class::Retryable
        );
        assert_eq!(
            classify(&clickhouse::error::Error::Network("reset".into())),
            Class::Retryable
        );
        assert_eq!(
            classify(&clickhouse::error::Error::NotEnoughData),
            Class::Fatal
        );
    }
}
