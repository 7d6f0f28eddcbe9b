//! systemd integration for the daemons (`Type=notify`): readiness, stop and watchdog pings.
//!
//! systemd sets `NOTIFY_SOCKET` for a `Type=notify` service and `WATCHDOG_USEC` when the unit
//! has `WatchdogSec=`. Without `NOTIFY_SOCKET` everything here is a no-op, so the daemons
//! behave the same when started by hand or by tests. A notification that cannot be sent is
//! logged as a warning and never stops a daemon: systemd's own timeouts catch what it misses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::signals::Control;

/// Set once STOPPING=1 went out, so the drain's start and the daemon's end send it once.
static STOPPING_SENT: AtomicBool = AtomicBool::new(false);

/// Whether a service manager wants notifications from this process.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// A daemon that told systemd it is ready. Dropping it (when the daemon's run returns, with
/// or without an error) stops the watchdog and sends STOPPING=1.
#[must_use = "dropping the session at once tells systemd the daemon is stopping"]
pub struct Session {
    watchdog: Option<JoinHandle<()>>,
}

impl Session {
    /// Sends READY=1 (with MAINPID), starts the watchdog if systemd asks for one, and returns
    /// the control stream to give the daemon: the same messages, but a stop request sends
    /// STOPPING=1 as the drain begins. Must be called inside the tokio runtime.
    pub fn ready(
        control: mpsc::UnboundedReceiver<Control>,
    ) -> (Session, mpsc::UnboundedReceiver<Control>) {
        if !enabled() {
            return (Session { watchdog: None }, control);
        }
        send(
            "READY=1",
            &[NotifyState::Ready, NotifyState::MainPid(std::process::id())],
        );
        let watchdog = sd_notify::watchdog_enabled().and_then(start_watchdog);
        (Session { watchdog }, announce_stops(control))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        stopping();
    }
}

/// Sends STOPPING=1, once per process.
pub fn stopping() {
    if enabled() && !STOPPING_SENT.swap(true, Ordering::SeqCst) {
        send("STOPPING=1", &[NotifyState::Stopping]);
    }
}

/// Sends RELOADING=1 (with the time, as systemd wants it); follow with [`reloaded`] once
/// the new configuration is in use or was rejected. Not yet called by the daemons: under
/// `Type=notify` systemd counts a reload as done when `ExecReload=` returns.
pub fn reloading() {
    if !enabled() {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING=1", &[NotifyState::Reloading, now]),
        Err(err) => tracing::warn!(error = %err, "Could not read the monotonic clock for systemd"),
    }
}

/// Sends READY=1 after a reload.
pub fn reloaded() {
    if enabled() {
        send("READY=1", &[NotifyState::Ready]);
    }
}

/// How often to ping a watchdog with this timeout: at half of it, as sd_watchdog_enabled(3)
/// recommends. None for a zero timeout, which systemd never sets and tokio cannot tick at.
pub fn ping_interval(timeout: Duration) -> Option<Duration> {
    let half = timeout / 2;
    (!half.is_zero()).then_some(half)
}

fn start_watchdog(timeout: Duration) -> Option<JoinHandle<()>> {
    let every = ping_interval(timeout)?;
    tracing::debug!(
        every_ms = every.as_millis() as u64,
        "Pinging the systemd watchdog"
    );
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            send("WATCHDOG=1", &[NotifyState::Watchdog]);
        }
    }))
}

/// Passes every control message on, sending STOPPING=1 at the first stop request.
fn announce_stops(mut from: mpsc::UnboundedReceiver<Control>) -> mpsc::UnboundedReceiver<Control> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = from.recv().await {
            if matches!(msg, Control::Stop | Control::Quit) {
                stopping();
            }
            if tx.send(msg).is_err() {
                break;
            }
        }
    });
    rx
}

fn send(what: &'static str, states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, state = what, "Could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        assert_eq!(
            ping_interval(Duration::from_secs(30)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            ping_interval(Duration::from_micros(1)),
            Some(Duration::from_nanos(500))
        );
        assert_eq!(ping_interval(Duration::ZERO), None);
    }

    #[tokio::test]
    async fn control_messages_pass_through_in_order() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rx = announce_stops(rx);
        for msg in [Control::Reload, Control::Stop, Control::Quit] {
            tx.send(msg).expect("the forwarder is running");
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(msg) = rx.recv().await {
            seen.push(msg);
        }
        assert_eq!(seen, [Control::Reload, Control::Stop, Control::Quit]);
    }
}
