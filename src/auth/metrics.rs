//! Sign-in's metrics: the login throttle's map sizes and the password hasher's figures (both read
//! at scrape time).

use prometheus::IntGaugeVec;

use crate::auth::password::HasherStats;
use crate::auth::throttle::ThrottleSizes;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct LoginMetrics {
    throttle_entries: IntGaugeVec,
    hashing: IntGaugeVec,
}

impl LoginMetrics {
    pub fn register(m: &Metrics) -> LoginMetrics {
        LoginMetrics {
            throttle_entries: m.gauges(
                "login_throttle_entries",
                "Entries in the login throttle's maps (address, account, device)",
                &["map"],
            ),
            hashing: m.gauges(
                "password_hashing",
                "The password hasher: workers and queue (limits), running now, peak running, refused (503) so far",
                &["figure"],
            ),
        }
    }

    /// Set the login throttle's and the password hasher's figures.
    pub fn set(&self, sizes: ThrottleSizes, hashing: HasherStats) {
        for (map, n) in [("address", sizes.addresses), ("account", sizes.accounts), ("device", sizes.devices)] {
            self.throttle_entries.with_label_values(&[map]).set(n as i64);
        }
        for (figure, n) in [
            ("workers", hashing.workers as u64),
            ("queue", hashing.queue as u64),
            ("running", hashing.running as u64),
            ("peak", hashing.peak as u64),
            ("refused", hashing.refused),
        ] {
            self.hashing.with_label_values(&[figure]).set(n as i64);
        }
    }
}
