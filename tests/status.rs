//! `pgfan status`'s numbers as an operator reads them: a consumer's pending events are the
//! events it has yet to read, counted, not a distance between sequence positions that a
//! forced tick moves on by a thousand.

mod common;

use common::{Backend, TestDb};

#[tokio::test]
async fn pending_events_are_counted_not_read_off_the_sequence() {
    let db = TestDb::master(Backend::Bundled).await;
    let m = db.connect().await;
    m.batch_execute(
        "select pgq.create_queue('status_q');
         select pgq.register_consumer('status_q', 'c');
         select pgq.insert_event('status_q', 't', 'one');
         select pgq.insert_event('status_q', 't', 'two');",
    )
    .await
    .unwrap();
    // A forced tick, as an operator or a test would take one.
    m.batch_execute("select pgq.force_tick('status_q'); select pgq.ticker('status_q');")
        .await
        .unwrap();
    let (sequence, counted): (i64, i64) = {
        let r = m
            .query_one(
                "select pending_events, pgfan.pending_events(queue_name, consumer_name)
                   from pgq.get_consumer_info('status_q', 'c')",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(counted, 2, "two events wait (PgQ's figure: {sequence})");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .args(["status", "--json", "--db", &db.conninfo])
        .output()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let consumer = status["consumers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["queue"] == "status_q"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(consumer["pending_events"], 2, "{status}");
    // The queue's own figures count events too: two in the last minute, none unticked.
    let queue = status["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["queue"] == "status_q"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(queue["new_events"], 0, "{status}");
    let rate = queue["events_per_sec"].as_f64().unwrap_or_default();
    assert!((rate - 2.0 / 60.0).abs() < 1e-9, "{status}");
    m.batch_execute("select pgq.insert_event('status_q', 't', 'three')")
        .await
        .unwrap();
    let new: i64 = m
        .query_one(
            "select new_events from pgfan.queue_activity('status_q')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(new, 1, "one event not ticked yet");
}
