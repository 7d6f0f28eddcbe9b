//! Reconnecting with back-off, logging once per outage rather than once per attempt.

use std::time::{Duration, Instant};

use tokio::sync::watch;

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// Tracks one connection's outage: the first failure is a WARN, retries are DEBUG, and the
/// recovery is an INFO with how long it lasted.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    target: String,
    since: Option<Instant>,
    attempts: u32,
    delay: Duration,
}

impl Outage {
    /// A tracker for the connection `what` (e.g. "ticker") to `target` (e.g. a database name).
    pub fn new(what: &'static str, target: impl Into<String>) -> Outage {
        Outage {
            what,
            target: target.into(),
            since: None,
            attempts: 0,
            delay: FIRST_DELAY,
        }
    }

    /// Records a failure; returns the delay to wait before the next attempt.
    pub fn failed(&mut self, err: &dyn std::error::Error) -> Duration {
        let err = chain(err);
        self.attempts += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            metrics::counter!("pgfan_outages_total", "what" => self.what).increment(1);
            tracing::warn!(what = self.what, target = %self.target, error = %err, "Database unavailable, retrying with back-off");
        } else {
            tracing::debug!(what = self.what, target = %self.target, error = %err, attempt = self.attempts, "Still unavailable");
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        delay
    }

    /// Records a success, closing the outage if there was one.
    pub fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            metrics::counter!("pgfan_reconnects_total", "what" => self.what).increment(1);
            tracing::info!(
                what = self.what,
                target = %self.target,
                attempts = self.attempts,
                outage_ms = since.elapsed().as_millis() as u64,
                "Database available again"
            );
        }
        self.attempts = 0;
        self.delay = FIRST_DELAY;
    }
}

/// Sleeps for `d` unless a stop is signalled first; returns true when stopping.
pub async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

/// An error with its sources ("db error: ERROR: ..."), since tokio-postgres' own text
/// alone ("db error") does not say what happened.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
