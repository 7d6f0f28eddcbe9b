//! The ticker session's loop: when to look at which queues, and which ones to tick.
//!
//! Three ways a queue gets ticked, from the cheapest for an idle database to the fastest:
//! - the *round*, every `ticker_period` (pgqd's cadence): one statement reads every queue's
//!   event sequence and last two ticks, and calls `pgq.ticker(queue)` only for the queues
//!   whose tick PgQ's own rules could allow now (new events, or an idle tick due); the
//!   other queues' calls would decline without writing anything, but cost the server a
//!   PL/pgSQL call each, which at 1,000 queues is most of a pgqd-style tick round;
//! - a *wake-up* (`pgfan_ticker_wake`, see urgent.rs) at a producer's commit: the named
//!   queues are ticked at once;
//! - the *fast poll*, every `poll_period`, of the queues that are active: whose sequence
//!   moved, or that were woken, within the last `ticker_period`. It reads only those
//!   queues' sequences and offers a tick to the ones with new events, so events of
//!   producers that do not notify (the PgQ extension's C insert, COPY) tick within a poll
//!   period once their queue is active, and within a round when it was idle. With no
//!   queue active nothing runs between rounds.
//!
//! An idle database thus costs one read-only statement per round, plus PgQ's idle ticks
//! (the same ones pgqd makes), and no WAL beyond those ticks.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::{Client, Statement};

use super::urgent::{self, Missed};
use super::TickerConfig;
use crate::db::Session;

/// The round: a tick offer to the queues that PgQ's `ticker(queue)` could tick now, and the
/// event sequence position of the queues that ticked or have events no tick covers yet
/// (the others are idle: no row for them, so an idle round moves a handful of rows, not
/// one per queue). `due` is PgQ's rule read from the same rows
/// `pgq.ticker` reads, in the same transaction (so the same `now()`): a tick when the queue
/// has none yet, when the sequence passed the last tick's position (new events; the
/// queue's `ticker_max_count` / `ticker_max_lag` then decide, inside `pgq.ticker`), or, with
/// no new events, when no previous tick exists or the last one is at least
/// `ticker_max_lag / 2` old and older than twice the gap before it or than
/// `ticker_idle_period`. A sequence never advanced reads as NULL and counts as no new
/// events, as it does for PgQ (its position is then the one the first tick recorded).
/// Materialized so that `pgq.ticker` runs exactly once per due queue, in queue order.
/// Only a tick over new events is announced (`NOTIFY pgfan_tick`): in PostgreSQL 15 every
/// notification costs every listening session of the database a transaction, so the idle
/// ticks of 1,000 node queues, announced, cost an idle fleet of 1,000 node daemons about
/// 1,000 transactions a second (bench case fleet). An empty batch needs no consumer in a
/// hurry; the next batch, or the consumer's fallback poll, takes it in. A queue's very
/// first event is the exception to reading "new events" off the positions: its first tick
/// records position 1 before any event exists (the sequence's start), and the first event
/// takes position 1, so a position of 1 at a tick that recorded 1 may be an event
/// (`first_event`): announced once per ticker session (`$1` lists the queues already
/// announced so), not at every idle tick after it: a fleet whose 1,000 node queues had one
/// event each would otherwise announce 1,000 idle ticks a minute, each waking every
/// listener of the database. The first announced tick covers the event unless its
/// transaction was still open; its commit then wakes the ticker (pgfan's producers
/// notify), or the missed-events check finds it while the queue is active (a silent
/// producer's transaction open longer than that waits for the consumer's own poll).
/// Events counted by a tick but not visible to it (their transaction was still open) are
/// ticked and announced by the missed-events check (urgent.rs), not here: announcing
/// every tick that follows one with transactions in progress would announce most idle
/// ticks of a busy master.
const ROUND_SQL: &str = "with r as materialized (
        select queue_id, queue_name, pos, pending, first_event,
               case when due then pgq.ticker(d.queue_name) end as tick_id
          from (select q.queue_id, q.queue_name, s.pos,
                       coalesce(s.pos > t.tick_event_seq, false) as pending,
                       coalesce(s.pos = 1 and t.tick_event_seq = 1, false)
                       and not (q.queue_name = any($1::text[])) as first_event,
                       t.tick_id is null
                       or s.pos > t.tick_event_seq
                       or p.tick_time is null
                       or (pg_catalog.now() - t.tick_time >= q.queue_ticker_max_lag / 2
                           and (pg_catalog.now() - t.tick_time >= 2 * (t.tick_time - p.tick_time)
                                or pg_catalog.now() - t.tick_time >= q.queue_ticker_idle_period))
                         as due
                  from pgq.queue q
                 cross join lateral (select pg_catalog.pg_sequence_last_value(
                                              q.queue_event_seq::regclass) as pos) s
                  left join lateral (
                        select tick_id, tick_time, tick_event_seq from pgq.tick
                         where tick_queue = q.queue_id
                         order by tick_queue desc, tick_id desc limit 1) t on true
                  left join lateral (
                        select tick_time from pgq.tick
                         where tick_queue = q.queue_id and tick_id < t.tick_id
                         order by tick_queue desc, tick_id desc limit 1) p on true
                 where not q.queue_ticker_paused and not q.queue_external_ticker) d
         order by queue_id)
    select queue_name, pos, pending, tick_id,
           case when tick_id is not null and (pending or first_event)
                then pg_catalog.pg_notify('pgfan_tick', queue_name) end::text,
           first_event
      from r where tick_id is not null or pending order by queue_id";

/// The fast poll: event sequence positions of the given (active) queues, and whether a
/// tick could cover new events (the sequence passed the last tick's position, or the
/// queue has no tick). Only those are offered a tick: an active queue without new events
/// gets its idle tick from the round, and offering every active queue a tick at every poll
/// cost a PL/pgSQL call per queue per poll (95 ms a poll after a `run_on_all` had woken
/// 1,000 node queues, for a second).
const POLL_SQL: &str =
    "select q.queue_name, s.pos, coalesce(s.pos > t.tick_event_seq, t.tick_id is null)
      from pgq.queue q
     cross join lateral (select pg_catalog.pg_sequence_last_value(
                                  q.queue_event_seq::regclass) as pos) s
      left join lateral (
            select tick_id, tick_event_seq from pgq.tick
             where tick_queue = q.queue_id
             order by tick_queue desc, tick_id desc limit 1) t on true
     where not q.queue_ticker_paused and not q.queue_external_ticker
       and q.queue_name = any($1)";

/// Offers a tick to the given queues and announces the ones that ticked.
/// Materialized so that `pgq.ticker` runs exactly once per queue.
const TICK_SQL: &str = "with t as materialized (
        select queue_name, pgq.ticker(queue_name) as tick_id
          from pgq.queue
         where not queue_ticker_paused and not queue_external_ticker
           and queue_name = any($1)
         order by queue_id)
    select queue_name, tick_id, pg_catalog.pg_notify('pgfan_tick', queue_name)::text
      from t where tick_id is not null";

/// The session's prepared statements.
struct Statements {
    round: Statement,
    poll: Statement,
    tick: Statement,
}

/// What the ticker knows of each queue between statements.
#[derive(Default)]
struct Activity {
    /// Event sequence position at the last look (None: never advanced).
    seen: HashMap<String, Option<i64>>,
    /// When each active queue's sequence last moved or it was woken. A queue stays active
    /// for one `ticker_period` after that: it is polled, offered a tick at every poll that
    /// finds new events (PgQ's own lag rules decide whether it ticks), and checked for
    /// events that its last tick missed because their transaction was still open (see
    /// urgent.rs).
    active: HashMap<String, Instant>,
    /// Queues whose first event's tick this session announced (see ROUND_SQL).
    first_announced: HashSet<String>,
}

impl Activity {
    /// Records a queue's position; true (and the queue active) when it moved since the
    /// last look. A first look counts as a move when `pending` says the queue has events
    /// no tick covers yet: the rounds leave idle queues out, so a queue first seen later
    /// has just become busy (a first look at an idle-ticked queue is no move).
    fn observe(&mut self, queue: String, pos: Option<i64>, pending: bool, now: Instant) -> bool {
        let moved = match self.seen.insert(queue.clone(), pos) {
            Some(before) => before != pos,
            None => pending,
        };
        if moved {
            self.active.insert(queue, now);
        }
        moved
    }

    /// Marks queues active that a wake-up ticked (real queues: a wake-up's payload is
    /// whatever its sender wrote).
    fn woken(&mut self, queues: Vec<String>, now: Instant) {
        for q in queues {
            self.active.insert(q, now);
        }
    }

    /// Forgets queues quiet for `period`.
    fn expire(&mut self, period: Duration, now: Instant) {
        self.active.retain(|_, at| now.duration_since(*at) < period);
    }

    fn first_announced_list(&self) -> Vec<String> {
        self.first_announced.iter().cloned().collect()
    }

    fn active_queues(&self) -> Vec<String> {
        self.active.keys().cloned().collect()
    }
}

/// Ticks until stopped (true) or until the session is due to be recycled (false).
pub(super) async fn run(
    session: &mut Session,
    db: &str,
    cfg: &TickerConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, tokio_postgres::Error> {
    let client = &session.client;
    // The order makes the ticker's state visible to tests: a statement with the text
    // `pgq.ticker(queue_name)` (TICK_SQL; pg_stat_activity shows a prepared statement's text
    // too) is what the session last ran only once it listens and has run its first round.
    client
        .batch_execute(&format!("listen {}", urgent::WAKE_CHANNEL))
        .await?;
    let round_sql = client.prepare(ROUND_SQL).await?;
    let poll_sql = client.prepare(POLL_SQL).await?;
    let opened = Instant::now();
    let mut activity = Activity::default();
    let mut missed = Missed::default();
    let mut woken: HashSet<String> = HashSet::new();
    let first = client
        .query(&round_sql, &[&activity.first_announced_list()])
        .await?;
    note_round(first, &mut activity, db);
    let urgent = sweep(client, &mut missed).await?;
    let st = Statements {
        round: round_sql,
        poll: poll_sql,
        tick: client.prepare(TICK_SQL).await?,
    };
    if !urgent.is_empty() {
        tick_now(client, &st.tick, urgent, db).await?;
    }
    let mut next_round = Instant::now() + cfg.ticker_period;
    loop {
        if !woken.is_empty() {
            // A commit announced these queues: tick them before anything else, so the
            // hand-off costs one statement (two when PgQ's idle back-off declines) rather
            // than waiting behind the poll and the missed-events search below.
            let queues: Vec<String> = std::mem::take(&mut woken).into_iter().collect();
            let ticked = tick_now(client, &st.tick, queues, db).await?;
            activity.woken(ticked, Instant::now());
        }
        let now = Instant::now();
        if now >= next_round {
            next_round = now + cfg.ticker_period;
            round(client, &st, &mut activity, &mut missed, cfg, db).await?;
        } else if !activity.active.is_empty() {
            fast_poll(client, &st, &mut activity, &mut missed, cfg, db).await?;
        }
        if opened.elapsed() >= cfg.connection_lifetime {
            return Ok(false);
        }
        let until_round = next_round.saturating_duration_since(Instant::now());
        let wait = if activity.active.is_empty() {
            until_round
        } else {
            cfg.poll_period.min(until_round)
        };
        if urgent::wait(wait, &mut session.messages, stop, &mut woken).await {
            return Ok(true);
        }
    }
}

/// Counts a round's ticks and records its positions; returns the active queues that did
/// not move.
fn note_round(rows: Vec<tokio_postgres::Row>, activity: &mut Activity, db: &str) -> Vec<String> {
    let now = Instant::now();
    let mut quiet = Vec::new();
    let mut ticks = 0u64;
    for row in rows {
        let (queue, pos, pending, tick_id): (String, Option<i64>, bool, Option<i64>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if let Some(tick_id) = tick_id {
            tracing::trace!(db, queue, tick_id, "Ticked");
            ticks += 1;
            if row.get::<_, bool>(5) {
                activity.first_announced.insert(queue.clone());
            }
        }
        let moved = activity.observe(queue.clone(), pos, pending, now);
        if !moved && activity.active.contains_key(&queue) {
            quiet.push(queue);
        }
    }
    count_ticks(db, ticks);
    quiet
}

/// Looks once, at the start of a session, at every queue for events that its last tick
/// missed: their commit's wake-up may have gone out while no session listened (the
/// previous one had ended), and a queue with no events waiting is left out of the
/// activity the missed-events search is otherwise limited to. Returns those queues.
async fn sweep(client: &Client, missed: &mut Missed) -> Result<Vec<String>, tokio_postgres::Error> {
    let queues: Vec<String> = client
        .query(
            "select queue_name from pgq.queue
              where not queue_ticker_paused and not queue_external_ticker",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    missed.find(client, &queues).await
}

/// The round (see ROUND_SQL), then a forced tick for active queues whose last tick missed
/// events.
async fn round(
    client: &Client,
    st: &Statements,
    activity: &mut Activity,
    missed: &mut Missed,
    cfg: &TickerConfig,
    db: &str,
) -> Result<(), tokio_postgres::Error> {
    let now = Instant::now();
    let rows = client
        .query(&st.round, &[&activity.first_announced_list()])
        .await?;
    let mut quiet = note_round(rows, activity, db);
    activity.expire(cfg.ticker_period, now);
    quiet.retain(|q| activity.active.contains_key(q));
    // The round ticked what PgQ allows; the newest tick is what the search looks behind.
    let urgent = missed.find(client, &quiet).await?;
    if !urgent.is_empty() {
        tick_now(client, &st.tick, urgent, db).await?;
    }
    Ok(())
}

/// Reads the active queues' positions and offers them ticks; forces a tick where their last
/// one missed events.
async fn fast_poll(
    client: &Client,
    st: &Statements,
    activity: &mut Activity,
    missed: &mut Missed,
    cfg: &TickerConfig,
    db: &str,
) -> Result<(), tokio_postgres::Error> {
    let now = Instant::now();
    let mut quiet = Vec::new();
    let mut pending = Vec::new();
    for row in client.query(&st.poll, &[&activity.active_queues()]).await? {
        let (queue, pos, new_events): (String, Option<i64>, bool) =
            (row.get(0), row.get(1), row.get(2));
        if new_events {
            pending.push(queue.clone());
        }
        if !activity.observe(queue.clone(), pos, false, now) {
            quiet.push(queue);
        }
    }
    activity.expire(cfg.ticker_period, now);
    quiet.retain(|q| activity.active.contains_key(q));
    let mut urgent: HashSet<String> = missed.find(client, &quiet).await?.into_iter().collect();
    let due: Vec<String> = pending
        .iter()
        .chain(urgent.iter())
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !due.is_empty() {
        for queue in offer_ticks(client, &st.tick, &due, db).await? {
            urgent.remove(&queue);
        }
    }
    if !urgent.is_empty() {
        // pgq.ticker declined them as idle: their events were counted by a tick that
        // could not see them yet.
        force_ticks(client, &st.tick, urgent.into_iter().collect(), db).await?;
    }
    Ok(())
}

/// Ticks `queues` now: offers each a tick and forces one where PgQ declines, because a
/// commit announced new events that an earlier tick may have counted while they were
/// still invisible (PgQ would then call the queue idle and back off). Returns the queues
/// that ticked.
async fn tick_now(
    client: &Client,
    tick: &Statement,
    mut queues: Vec<String>,
    db: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut ticked = offer_ticks(client, tick, &queues, db).await?;
    queues.retain(|q| !ticked.contains(q));
    if !queues.is_empty() {
        ticked.extend(force_ticks(client, tick, queues, db).await?);
    }
    Ok(ticked)
}

/// `pgq.force_tick` for `queues`, then a tick offer, which PgQ then accepts; returns the
/// queues that ticked. Only queues
/// this ticker drives are forced: a wake-up's payload is whatever its sender wrote, and a
/// name that is no queue (or a paused one) must neither fail the session nor move a
/// sequence.
async fn force_ticks(
    client: &Client,
    tick: &Statement,
    queues: Vec<String>,
    db: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    client
        .execute(
            "select pgq.force_tick(queue_name) from pgq.queue
              where queue_name = any($1)
                and not queue_ticker_paused and not queue_external_ticker",
            &[&queues],
        )
        .await?;
    offer_ticks(client, tick, &queues, db).await
}

/// Runs TICK_SQL for `queues`; returns the queues that ticked.
async fn offer_ticks(
    client: &Client,
    tick: &Statement,
    queues: &[String],
    db: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut ticked = Vec::new();
    for row in client.query(tick, &[&queues]).await? {
        let (queue, tick_id): (String, i64) = (row.get(0), row.get(1));
        tracing::trace!(db, queue, tick_id, "Ticked");
        ticked.push(queue);
    }
    count_ticks(db, ticked.len() as u64);
    Ok(ticked)
}

fn count_ticks(db: &str, n: u64) {
    if n > 0 {
        metrics::counter!("pgfan_ticker_ticks_total", "db" => db.to_string()).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_active_from_its_move_for_one_period() {
        let mut a = Activity::default();
        let t0 = Instant::now();
        let period = Duration::from_secs(1);
        assert!(!a.observe("q".into(), Some(5), false, t0));
        assert!(
            a.active.is_empty(),
            "a first look at an idle queue is no move"
        );
        assert!(
            !a.observe("q".into(), Some(5), true, t0),
            "events waiting, not new"
        );
        assert!(a.observe("q".into(), Some(6), false, t0));
        a.expire(period, t0 + Duration::from_millis(999));
        assert_eq!(a.active_queues(), ["q"]);
        a.expire(period, t0 + period);
        assert!(a.active.is_empty(), "quiet for a period: idle again");
    }

    #[test]
    fn a_first_look_at_a_queue_with_waiting_events_is_a_move() {
        let mut a = Activity::default();
        let t0 = Instant::now();
        assert!(a.observe("busy".into(), Some(9), true, t0));
        assert!(!a.observe("q".into(), None, false, t0));
        assert!(a.observe("q".into(), Some(1), false, t0), "a first advance");
        let mut active = a.active_queues();
        active.sort();
        assert_eq!(active, ["busy", "q"]);
    }

    #[test]
    fn woken_queues_are_active() {
        let mut a = Activity::default();
        a.woken(vec!["q".into()], Instant::now());
        assert_eq!(a.active_queues(), ["q"]);
    }
}
