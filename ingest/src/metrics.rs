//! Ingest's metrics, exported on `/metrics` in Prometheus text format.
//!
//! - `trellis_ingest_events_accepted_total{project, kind}`: events stored on the bus.
//! - `trellis_ingest_events_dropped_total{project, reason}`: events not stored; `reason` is one
//!   of `invalid`, `too_large`, `rate_limited`, `no_consent`, `unavailable`, `refused_by_bus`, `too_old`.
//! - `trellis_ingest_fields_trimmed_total{project, field}`: lists and strings cut to their caps
//!   in stored events ([`crate::trim`]); `field` is one of `exceptions`, `frames`,
//!   `breadcrumbs`, `spans`, `tags`, `strings`.
//! - `trellis_ingest_client_discarded_total{project, reason, category}`: events SDKs reported
//!   dropping on the device (Sentry client reports).
//! - `trellis_ingest_items_skipped_total{item_type}`: Sentry envelope items ingest does not
//!   store (unknown types, attachments), and `performance_sample`: samples of a transaction
//!   beyond the request's `max_events_per_request` (the transaction itself is stored whole).
//! - `trellis_ingest_requests_total{endpoint, status}`: requests answered.
//! - `trellis_ingest_request_seconds{endpoint}`: time to answer, bus acknowledgement included.
//! - `trellis_ingest_connections_open`: HTTP connections open now (at most
//!   `ingest.limits.max_connections`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Most distinct values a label taken from a request may have; later ones count as `other`.
const MAX_CLIENT_LABEL_VALUES: usize = 64;

/// Values of labels that come from requests (item types, client-report reasons and categories),
/// bounded so that a client cannot grow the metric series without end.
#[derive(Default)]
struct ClientLabels(std::sync::Mutex<std::collections::HashSet<String>>);

impl ClientLabels {
    fn bound(&self, value: &str) -> String {
        let plausible = !value.is_empty()
            && value.len() <= 40
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if !plausible {
            return "other".into();
        }
        let Ok(mut seen) = self.0.lock() else {
            return "other".into();
        };
        if seen.contains(value)
            || (seen.len() < MAX_CLIENT_LABEL_VALUES && seen.insert(value.to_string()))
        {
            value.to_string()
        } else {
            "other".into()
        }
    }
}

/// Every ingest metric.
pub struct IngestMetrics {
    client_labels: ClientLabels,
    accepted: Family<Labels, Counter>,
    /// Every project's and kind's accepted events, for `trellis run`'s status line (the
    /// labelled `accepted` are what is exported).
    accepted_total: Counter,
    dropped: Family<Labels, Counter>,
    trimmed: Family<Labels, Counter>,
    client_discarded: Family<Labels, Counter>,
    skipped: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    connections: Gauge,
}

/// An open connection, counted until dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            client_labels: ClientLabels::default(),
            accepted: Family::default(),
            accepted_total: Counter::default(),
            dropped: Family::default(),
            trimmed: Family::default(),
            client_discarded: Family::default(),
            skipped: Family::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            connections: Gauge::default(),
        }
    }
}

impl IngestMetrics {
    /// Registers every ingest metric in `registry`, under `trellis_ingest`: the one list of
    /// them, for [`IngestMetrics::render`] and for the one `/metrics` of `trellis run`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("trellis_ingest");
        registry.register(
            "events_accepted",
            "Events stored on the bus",
            self.accepted.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not stored, by reason",
            self.dropped.clone(),
        );
        registry.register(
            "fields_trimmed",
            "Lists and strings of stored events cut to their caps, by field",
            self.trimmed.clone(),
        );
        registry.register(
            "client_discarded",
            "Events SDKs reported dropping on the device",
            self.client_discarded.clone(),
        );
        registry.register(
            "items_skipped",
            "Sentry envelope items not stored, by type",
            self.skipped.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by endpoint and status",
            self.requests.clone(),
        );
        registry.register(
            "request_seconds",
            "Time to answer a request",
            self.latency.clone(),
        );
        registry.register(
            "connections_open",
            "HTTP connections open now",
            self.connections.clone(),
        );
    }

    /// Counts a connection as open until the answer is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.inc();
        OpenConnection(self.connections.clone())
    }

    /// HTTP connections open now.
    pub fn connections_open(&self) -> i64 {
        self.connections.get()
    }

    /// Counts accepted events.
    pub fn accepted(&self, project: &str, kind: &str, n: u64) {
        self.accepted
            .get_or_create(&vec![
                ("project", project.to_string()),
                ("kind", kind.to_string()),
            ])
            .inc_by(n);
        self.accepted_total.inc_by(n);
    }

    /// Events accepted so far, over every project and kind.
    pub fn accepted_total(&self) -> u64 {
        self.accepted_total.get()
    }

    /// Counts dropped events.
    pub fn dropped(&self, project: &str, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped
                .get_or_create(&vec![
                    ("project", project.to_string()),
                    ("reason", reason.to_string()),
                ])
                .inc_by(n);
        }
    }

    /// Counts elements or strings cut from stored events.
    pub fn trimmed(&self, project: &str, field: &'static str, n: u64) {
        if n > 0 {
            self.trimmed
                .get_or_create(&vec![
                    ("project", project.to_string()),
                    ("field", field.to_string()),
                ])
                .inc_by(n);
        }
    }

    /// Counts events an SDK reported discarding.
    pub fn client_discarded(&self, project: &str, reason: &str, category: &str, n: u64) {
        self.client_discarded
            .get_or_create(&vec![
                ("project", project.to_string()),
                ("reason", self.client_labels.bound(reason)),
                ("category", self.client_labels.bound(category)),
            ])
            .inc_by(n);
    }

    /// Counts a skipped envelope item.
    pub fn skipped(&self, item_type: &str) {
        self.skipped_n(item_type, 1);
    }

    /// Counts `n` skipped items of one type.
    pub fn skipped_n(&self, item_type: &str, n: u64) {
        self.skipped
            .get_or_create(&vec![("item_type", self.client_labels.bound(item_type))])
            .inc_by(n);
    }

    /// Counts an answered request and its latency.
    pub fn request(&self, endpoint: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("endpoint", endpoint.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("endpoint", endpoint.to_string())])
            .observe(seconds);
    }

    /// The Prometheus text exposition.
    ///
    /// Labels that come from requests are bounded: see [`MAX_CLIENT_LABEL_VALUES`].
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_requests_cannot_grow_without_bound() {
        let m = IngestMetrics::default();
        for i in 0..1000 {
            m.skipped(&format!("type_{i}"));
        }
        m.skipped("Not A Type!");
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("trellis_ingest_items_skipped_total{"))
            .count();
        assert_eq!(series, MAX_CLIENT_LABEL_VALUES + 1, "64 values and `other`");
        assert!(
            text.contains("trellis_ingest_items_skipped_total{item_type=\"other\"} 937"),
            "{text}"
        );
    }
}
