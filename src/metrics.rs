//! Prometheus metrics (`GET /metrics`, text exposition format). Counters and
//! histograms only: labels are fixed kinds and outcomes, never ids of rooms,
//! users or patients, never content.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `application`, `proposal` or `commit`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// Which bounded queue overflowed.
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabel {
    /// `fhir` or `hl7`.
    pub protocol: String,
    /// `stored`, `duplicate`, or the refusal (`AE`, `AR`, `400`, `401`, `422`, `503`).
    pub outcome: String,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub ws_connections: Gauge,
    /// Messages accepted (durable), by kind.
    pub accepted: Family<KindLabel, Counter>,
    /// Messages refused, by error code.
    pub refused: Family<OutcomeLabel, Counter>,
    /// Frames written to WebSocket clients (message copies delivered).
    pub delivered: Counter,
    /// Seconds from a commit's arrival to its ack (validated and durable).
    pub commit_seconds: Histogram,
    /// Seconds one group-commit transaction took.
    pub write_batch_seconds: Histogram,
    /// Messages per group-commit transaction.
    pub write_batch_size: Histogram,
    /// Connections closed because a bounded queue overflowed.
    pub queue_drops: Family<QueueLabel, Counter>,
    /// Logins by outcome (`ok`, `failed`, `rate_limited`, `totp_required`).
    pub logins: Family<OutcomeLabel, Counter>,
    /// Clinical ingestion requests / HL7 messages by protocol and outcome.
    pub ingested: Family<IngestLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tonari");
        let ws_connections = Gauge::default();
        registry.register(
            "websocket_connections",
            "Open WebSocket connections",
            ws_connections.clone(),
        );
        let accepted = Family::<KindLabel, Counter>::default();
        registry.register(
            "messages_accepted",
            "Messages accepted and durable, by kind",
            accepted.clone(),
        );
        let refused = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "messages_refused",
            "Messages refused, by error code",
            refused.clone(),
        );
        let delivered = Counter::default();
        registry.register(
            "messages_delivered",
            "Message and event frames written to WebSocket clients",
            delivered.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register(
            "commit_latency_seconds",
            "Seconds from a commit's arrival to its durable acceptance",
            commit_seconds.clone(),
        );
        let write_batch_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "write_batch_seconds",
            "Seconds one group-commit transaction took",
            write_batch_seconds.clone(),
        );
        let write_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "write_batch_messages",
            "Messages written per group-commit transaction",
            write_batch_size.clone(),
        );
        let queue_drops = Family::<QueueLabel, Counter>::default();
        registry.register(
            "queue_drops",
            "Connections closed because a bounded queue overflowed (slow consumers)",
            queue_drops.clone(),
        );
        let logins = Family::<OutcomeLabel, Counter>::default();
        registry.register("logins", "Login attempts by outcome", logins.clone());
        let ingested = Family::<IngestLabel, Counter>::default();
        registry.register(
            "ingest",
            "Clinical ingestion (FHIR requests, HL7 messages) by protocol and outcome",
            ingested.clone(),
        );
        Metrics {
            registry,
            ws_connections,
            accepted,
            refused,
            delivered,
            commit_seconds,
            write_batch_seconds,
            write_batch_size,
            queue_drops,
            logins,
            ingested,
        }
    }

    pub fn ingest(&self, protocol: &str, outcome: &str) {
        self.ingested
            .get_or_create(&IngestLabel {
                protocol: protocol.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn login(&self, outcome: &str) {
        self.logins
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn queue_drop(&self, queue: &str) {
        self.queue_drops
            .get_or_create(&QueueLabel {
                queue: queue.to_string(),
            })
            .inc();
    }

    pub fn refused(&self, code: &str) {
        self.refused
            .get_or_create(&OutcomeLabel {
                outcome: code.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.accepted
            .get_or_create(&KindLabel {
                kind: "application".into(),
            })
            .inc();
        m.login("ok");
        m.commit_seconds.observe(0.002);
        let text = m.render();
        assert!(text.contains("tonari_messages_accepted_total{kind=\"application\"} 1"));
        assert!(text.contains("tonari_logins_total{outcome=\"ok\"} 1"));
        assert!(text.contains("tonari_commit_latency_seconds_count 1"));
        assert!(text.contains("# EOF"));
    }
}
