//! Invariants of the event-data parsers, shared by the fuzz target
//! (`fuzz/fuzz_targets/event_data.rs`) and by `tests/bad_input.rs`, which runs them over the
//! committed seed corpus (`fuzz/seeds/event_data/`) so that CI checks them on every change.
//!
//! Event data comes from any producer, so whatever the bytes, no parser may panic. Beyond
//! that, the relay and the node parse the same data in turn: what the relay accepts and
//! routes, the node must be able to decode and run as the same work. A request that routes
//! but whose task the node cannot read would fail late, on a node, with an error that no
//! longer points at the event that caused it.

use pgfan::node::payload::{TaskOptions, Work};
use pgfan::relay::request::{Kind, Request};
use pgfan::urlenc;

/// Checks every invariant on one input; panics (which the fuzzer reports) on a violation.
pub fn check(input: &[u8]) {
    // ev_data is PostgreSQL text: always UTF-8. Other bytes still go through the lossy
    // conversion so that the fuzzer's mutations are not wasted.
    let text = String::from_utf8_lossy(input);
    check_decode(&text);
    for kind in [Kind::Sql, Kind::Call, Kind::Copy] {
        check_request(kind, &text);
    }
    for kind in ["sql", "call", "copy", "shell", ""] {
        let _ = Work::parse(kind, &text);
    }
    let _ = TaskOptions::parse(Some(&text));
    let _ = Kind::parse(&text);
}

/// The strict decoder: keys are never empty, NUL never gets through, and encoding what it
/// decoded gives the same pairs back.
fn check_decode(text: &str) {
    let decoded = urlenc::decode(text);
    if text.contains('\0') {
        assert!(decoded.is_err(), "raw NUL accepted in {text:?}");
    }
    let Ok(pairs) = decoded else { return };
    for (k, v) in &pairs {
        assert!(!k.is_empty(), "empty key from {text:?}");
        assert!(!k.contains('\0') && !v.contains('\0'), "NUL from {text:?}");
    }
    let encoded = urlenc::encode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(
        urlenc::decode(&encoded).as_ref(),
        Ok(&pairs),
        "round trip of {text:?} through {encoded:?}"
    );
}

/// A request the relay accepts becomes tasks the node decodes to the same work, with
/// options the node reads back unchanged, whichever form (raw event or job params) it took.
fn check_request(kind: Kind, text: &str) {
    let Ok(req) = Request::from_event(kind, text) else {
        return;
    };
    assert!(!req.payloads.is_empty(), "{kind:?} {text:?}: no payload");
    let works: Vec<Work> = req
        .payloads
        .iter()
        .map(|p| {
            Work::parse(kind.name(), p).unwrap_or_else(|e| {
                panic!("{kind:?} {text:?}: the relay routes {p:?}, the node says {e}")
            })
        })
        .collect();
    check_work(kind, &req, &works, text);
    let opts = TaskOptions::parse(Some(&req.options()))
        .unwrap_or_else(|e| panic!("{kind:?} {text:?}: options {:?}: {e}", req.options()));
    assert_eq!(opts.tx, req.tx, "{text:?}: tx");
    let want_ms = req.timeout.map(|t| t.as_millis()).filter(|ms| *ms > 0);
    assert_eq!(
        opts.timeout_ms.map(|ms| ms as u128),
        want_ms,
        "{text:?}: timeout"
    );
    let lanes = req.lanes(7);
    assert_eq!(
        lanes.len(),
        req.payloads.len(),
        "{text:?}: one lane per task"
    );
    let stored = Request::from_params(kind, &req.params_json())
        .unwrap_or_else(|e| panic!("{kind:?} {text:?}: stored as job params it fails: {e}"));
    assert_eq!(
        (
            &stored.reduce,
            &stored.policy,
            &stored.lane,
            stored.parallel
        ),
        (&req.reduce, &req.policy, &req.lane, req.parallel),
        "{text:?}: options as job params"
    );
    assert_eq!(
        (stored.timeout, stored.tx),
        (req.timeout, req.tx),
        "{text:?}"
    );
    if kind != Kind::Copy {
        // A copy's columns may come back in another order (params are a JSON object);
        // the values of one key, which is all sql and call use, keep theirs.
        assert_eq!(
            stored.payloads, req.payloads,
            "{text:?}: payloads as job params"
        );
    }
}

/// Each task is what the event asked for: one per sql= value; fn and its args in order;
/// the copy's action, table and columns without the option keys.
fn check_work(kind: Kind, req: &Request, works: &[Work], text: &str) {
    let values = |key: &str| -> Vec<&str> {
        req.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    match kind {
        Kind::Sql => {
            let sqls: Vec<&str> = values("sql")
                .into_iter()
                .filter(|s| !s.trim().is_empty())
                .collect();
            let got: Vec<&str> = works
                .iter()
                .map(|w| match w {
                    Work::Sql { sql } => sql.as_str(),
                    other => panic!("{text:?}: sql became {other:?}"),
                })
                .collect();
            assert_eq!(got, sqls, "{text:?}");
        }
        Kind::Call => {
            assert_eq!(works.len(), 1, "{text:?}");
            let Work::Call { func, args } = &works[0] else {
                panic!("{text:?}: call became {:?}", works[0]);
            };
            assert_eq!(values("fn"), [func.as_str()], "{text:?}");
            assert_eq!(
                values("arg"),
                args.iter().map(String::as_str).collect::<Vec<_>>()
            );
        }
        Kind::Copy => {
            assert_eq!(works.len(), 1, "{text:?}");
            let Work::Copy { table, columns, .. } = &works[0] else {
                panic!("{text:?}: copy became {:?}", works[0]);
            };
            assert_eq!(
                values("table").first().copied(),
                table.as_deref(),
                "{text:?}"
            );
            assert!(!columns.is_empty(), "{text:?}");
            for (c, v) in columns {
                assert!(
                    req.pairs.iter().any(|(k, x)| k == c && x == v),
                    "{text:?}: column {c}={v:?} is not in the event"
                );
            }
        }
    }
}
