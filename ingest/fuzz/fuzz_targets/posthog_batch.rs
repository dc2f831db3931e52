//! PostHog bodies (batch, list or single event): `posthog::parse` on arbitrary bytes, with the
//! default event size limit and a small one. Panics if it panics, if a refused body is not a 4xx
//! with a reason, or if a refused event has no reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_ingest::accept::Item;
use trellis_ingest::config::LimitsConfig;
use trellis_ingest::posthog;

fuzz_target!(|data: &[u8]| {
    for max_event_bytes in [LimitsConfig::default().max_event_bytes, 64] {
        match posthog::parse(data, 10_000, max_event_bytes) {
            Ok(p) => {
                for item in &p.items {
                    if let Item::Invalid { reason, .. } = item {
                        assert!(!reason.trim().is_empty(), "an invalid item has no reason");
                    }
                }
            }
            Err(e) => {
                assert!(e.status().is_client_error(), "{e:?} answers {}", e.status());
                assert!(!e.to_string().trim().is_empty(), "{e:?} has no reason");
            }
        }
    }
});
