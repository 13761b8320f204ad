//! The audit log's metrics: entries the batcher never wrote, prunes refused, checkpoints by result.

use prometheus::{IntCounter, IntCounterVec};

use crate::metrics::{follow, Metrics};

/// The results `tokenvault_audit_checkpoints_total` counts: published (at least the log line), not
/// published (the head is not authenticated, or the database failed), or published after finding
/// the log no longer holding the previous checkpoint of this instance.
pub const CHECKPOINT_RESULTS: [&str; 3] = ["published", "failed", "inconsistent"];

/// What the audit batcher never wrote, so far (`crate::audit::batcher::Batcher`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLosses {
    /// Dropped because its queue was full.
    pub dropped: u64,
    /// Lost because a batch could not be written.
    pub lost: u64,
}

#[derive(Clone)]
pub struct AuditMetrics {
    lost: IntCounterVec,
    prune_refused: IntCounter,
    checkpoints: IntCounterVec,
}

impl AuditMetrics {
    pub fn register(m: &Metrics) -> AuditMetrics {
        let checkpoints = m.counters(
            "audit_checkpoints_total",
            "Audit checkpoints by result: published, failed (not published), inconsistent (the log no longer \
             holds this instance's previous checkpoint)",
            &["result"],
        );
        for result in CHECKPOINT_RESULTS {
            checkpoints.with_label_values(&[result]);
        }
        AuditMetrics {
            lost: m.counters(
                "audit_entries_lost_total",
                "Audit entries of the batcher (reads, refused sign-ins) never written: queue_full, write_failed",
                &["reason"],
            ),
            prune_refused: m.counter(
                "audit_prune_refused_total",
                "Audit retention prunes that removed nothing because the chain did not verify up to the cut-off",
            ),
            checkpoints,
        }
    }

    /// An audit prune refused (something before its cut-off did not verify).
    pub fn prune_refused(&self) {
        self.prune_refused.inc();
    }

    /// An audit checkpoint and its result (one of [`CHECKPOINT_RESULTS`]).
    pub fn checkpoint(&self, result: &str) {
        self.checkpoints.with_label_values(&[result]).inc();
    }

    /// The batcher's running totals (read at scrape time).
    pub fn set_losses(&self, losses: AuditLosses) {
        for (reason, total) in [("queue_full", losses.dropped), ("write_failed", losses.lost)] {
            follow(&self.lost.with_label_values(&[reason]), total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AuditLosses, AuditMetrics, CHECKPOINT_RESULTS};
    use crate::metrics::Metrics;

    /// The audit batcher's losses are counters that follow its totals across scrapes.
    #[test]
    fn audit_losses_are_exported_as_counters() {
        let m = Metrics::new();
        let audit = AuditMetrics::register(&m);
        audit.set_losses(AuditLosses { dropped: 3, lost: 0 });
        let text = m.render();
        assert!(text.contains("tokenvault_audit_entries_lost_total{reason=\"queue_full\"} 3"), "{text}");
        assert!(text.contains("tokenvault_audit_entries_lost_total{reason=\"write_failed\"} 0"), "{text}");
        audit.set_losses(AuditLosses { dropped: 5, lost: 2 });
        let text = m.render();
        assert!(text.contains("tokenvault_audit_entries_lost_total{reason=\"queue_full\"} 5"), "{text}");
        assert!(text.contains("tokenvault_audit_entries_lost_total{reason=\"write_failed\"} 2"), "{text}");
    }

    /// Refused prunes and checkpoints are counters, every checkpoint result shown from the start.
    #[test]
    fn audit_prunes_refused_and_checkpoints_are_counted() {
        let m = Metrics::new();
        let audit = AuditMetrics::register(&m);
        let text = m.render();
        assert!(text.contains("tokenvault_audit_prune_refused_total 0"), "{text}");
        for result in CHECKPOINT_RESULTS {
            assert!(text.contains(&format!("tokenvault_audit_checkpoints_total{{result=\"{result}\"}} 0")), "{text}");
        }
        audit.prune_refused();
        audit.checkpoint("published");
        audit.checkpoint("published");
        let text = m.render();
        assert!(text.contains("tokenvault_audit_prune_refused_total 1"), "{text}");
        assert!(text.contains("tokenvault_audit_checkpoints_total{result=\"published\"} 2"), "{text}");
    }
}
