//! Sentry envelopes: `sentry::envelope::parse`, `sentry::parse_envelope` and
//! `sentry::parse_store` on arbitrary bytes. Panics if a parser panics, if a refused body is not
//! a 4xx with a reason, or if a refused event has no reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_ingest::accept::{IngestError, Item};
use trellis_ingest::config::LimitsConfig;
use trellis_ingest::metrics::IngestMetrics;
use trellis_ingest::sentry::{self, envelope};

fn check_err(e: &IngestError) {
    assert!(e.status().is_client_error(), "{e:?} answers {}", e.status());
    assert!(!e.to_string().trim().is_empty(), "{e:?} has no reason");
}

fn check_items(items: &[Item]) {
    for item in items {
        if let Item::Invalid { reason, .. } = item {
            assert!(!reason.trim().is_empty(), "an invalid item has no reason");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let framing = envelope::parse(data, 10_000);
    if let Err(e) = &framing {
        assert!(!e.to_string().is_empty(), "{e:?} has no text");
    }
    let limits = LimitsConfig::default();
    // A fresh registry each run: metric labels come from the input (item types, client report
    // reasons), and a shared one would grow for the whole run.
    let metrics = IngestMetrics::default();
    match sentry::parse_envelope(data, &limits, &metrics, "fuzz") {
        Ok(p) => {
            assert!(framing.is_ok(), "parse_envelope read what the framing refused");
            check_items(&p.items);
        }
        Err(e) => check_err(&e),
    }
    match sentry::parse_store(data, &limits) {
        Ok(p) => check_items(&p.items),
        Err(e) => check_err(&e),
    }
});
