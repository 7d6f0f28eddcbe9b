//! The change-capture triggers `pgq.logutriga`, `pgq.sqltriga` and `pgq.jsontriga` of the
//! bundled core queue byte for byte what the real PgQ 3.5 extension's do.
//!
//! Each test runs one script statement by statement on a database with each backend and
//! compares the transcripts: every statement's rows or error (message and SQLSTATE), and
//! the events it queued (ev_type, ev_data, ev_extra1..4, read from the queue's event
//! tables). Consumers parse these strings, so the transcripts must be equal line for line.
//! A few spot checks on the extension's transcript keep the comparisons from being vacuous
//! and document the formats. `PGFAN_SHOW_TRANSCRIPT=1 cargo test --test triggers --
//! --nocapture` prints the extension's transcripts.

mod common;

use common::{consume_all, register, tick, Backend, TestDb};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The queue all triggers of a script write to.
const QUEUE: &str = "trg";

/// A script line that continues in a new session. PL/pgSQL compiles a trigger function once
/// per trigger and keeps it for the session, so scripts that create hundreds of triggers
/// start new sessions now and then.
const RECONNECT: &str = "\\reconnect";

/// Runs `setup` (must succeed), then `script` statement by statement in autocommit mode, a
/// failing statement not stopping the script, and returns the transcript.
async fn transcript(backend: Backend, setup: &[&str], script: &[String]) -> Vec<String> {
    let db = TestDb::new(backend).await;
    let mut client = db.connect().await;
    client
        .query_one("select pgq.create_queue($1)", &[&QUEUE])
        .await
        .expect("create the queue");
    let pfx: String = client
        .query_one(
            "select queue_data_pfx from pgq.queue where queue_name = $1",
            &[&QUEUE],
        )
        .await
        .unwrap()
        .get(0);
    for s in setup {
        client
            .batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: setup `{s}` failed: {e:?}"));
    }
    let mut last_id = 0i64;
    let mut out = Vec::new();
    for stmt in script {
        out.push(format!("> {stmt}"));
        if stmt == RECONNECT {
            client = db.connect().await;
            continue;
        }
        match client.simple_query(stmt).await {
            Ok(msgs) => {
                for m in msgs {
                    if let SimpleQueryMessage::Row(r) = m {
                        let vals: Vec<Option<&str>> = (0..r.len()).map(|i| r.get(i)).collect();
                        out.push(format!("  row {vals:?}"));
                    }
                }
            }
            Err(e) => {
                let err = e
                    .as_db_error()
                    .unwrap_or_else(|| panic!("{backend:?}: `{stmt}`: {e:?}"));
                out.push(format!("  error {} {}", err.code().code(), err.message()));
            }
        }
        if !["create trigger", "drop trigger", "table ", "set ", "reset "]
            .iter()
            .any(|p| stmt.starts_with(p))
        {
            last_id = new_events(&client, &pfx, last_id, &mut out).await;
        }
    }
    out
}

/// Appends the events after `last_id` to `out`; returns the newest id.
async fn new_events(client: &Client, pfx: &str, mut last_id: i64, out: &mut Vec<String>) -> i64 {
    let rows = client
        .query(
            &format!(
                "select ev_id, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4
                   from {pfx} where ev_id > $1 order by ev_id"
            ),
            &[&last_id],
        )
        .await
        .unwrap();
    for r in rows {
        last_id = r.get(0);
        let fields: Vec<Option<String>> = (1..7).map(|i| r.get(i)).collect();
        out.push(format!("  event {fields:?}"));
    }
    last_id
}

/// Runs the script on both backends and asserts equal transcripts; returns the extension's.
async fn same_as_extension(setup: &[&str], script: &[String]) -> Vec<String> {
    let (bundled, extension) = tokio::join!(
        transcript(Backend::Bundled, setup, script),
        transcript(Backend::Extension, setup, script)
    );
    if std::env::var_os("PGFAN_SHOW_TRANSCRIPT").is_some() {
        eprintln!("{}", extension.join("\n"));
    }
    if let Some(i) =
        (0..bundled.len().max(extension.len())).find(|&i| bundled.get(i) != extension.get(i))
    {
        let around = |t: &[String]| -> String {
            let from = i.saturating_sub(12);
            t.iter()
                .skip(from)
                .take(i + 4 - from)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        };
        panic!(
            "the bundled triggers differ from the extension's at transcript line {i}\n\
             extension:\n  {}\nbundled:\n  {}",
            around(&extension),
            around(&bundled),
        );
    }
    extension
}

fn owned(stmts: &[&str]) -> Vec<String> {
    stmts.iter().map(|s| s.to_string()).collect()
}

fn has(transcript: &[String], needle: &str) -> bool {
    transcript.iter().any(|l| l.contains(needle))
}

const TYPES_SETUP: &[&str] = &[
    "create type mood as enum ('sad', 'happy')",
    "create type pair as (x int, y text)",
    "create domain posint as int check (value > 0)",
    r#"create schema "Odd Sch""#,
    // Key columns in another order than the table's, a keyword, capitals, spaces, quotes,
    // a comma and non-ASCII in names, a dropped column, and every common type.
    r#"create table "Odd Sch"."Tab ""Q"" 1" (
        "Key B" text, "keyA" int, "select" text, "Ünï" text, "col,comma" text, "a b" text,
        dropme int, txt text, n numeric, f8 float8, f4 float4, b bool, d date, ts timestamp,
        tstz timestamptz, tm time, tmtz timetz, iv interval, j json, jb jsonb, arr int[],
        tarr text[], comp pair, m mood, dom posint, ch char(4), vc varchar(10), by bytea,
        u uuid, ip inet, pt point, rg int4range, i2 int2, i8 int8, o oid,
        primary key ("keyA", "Key B"))"#,
    r#"alter table "Odd Sch"."Tab ""Q"" 1" drop column dropme"#,
    r#"create trigger j after insert or update or delete on "Odd Sch"."Tab ""Q"" 1"
        for each row execute procedure pgq.jsontriga('trg')"#,
    r#"create trigger l after insert or update or delete on "Odd Sch"."Tab ""Q"" 1"
        for each row execute procedure pgq.logutriga('trg')"#,
    r#"create trigger s after insert or update or delete on "Odd Sch"."Tab ""Q"" 1"
        for each row execute procedure pgq.sqltriga('trg', 'backup')"#,
    "create table nopk (a int, b text)",
    "create trigger j after insert or update or delete on nopk for each row execute procedure pgq.jsontriga('trg')",
    "create trigger l after insert or update or delete on nopk for each row execute procedure pgq.logutriga('trg')",
    "create trigger s after insert or update or delete on nopk for each row execute procedure pgq.sqltriga('trg')",
    "create table parted (id int primary key, v text) partition by range (id)",
    "create table parted_1 partition of parted for values from (0) to (100)",
    "create trigger l after insert or update or delete on parted for each row execute procedure pgq.logutriga('trg', 'backup')",
    "create trigger j after insert or update or delete on parted for each row execute procedure pgq.jsontriga('trg', 'backup')",
];

const T: &str = r#""Odd Sch"."Tab ""Q"" 1""#;

fn types_script() -> Vec<String> {
    let awkward = r##"E' !"#$%&''()*+,-./:;<=>?@[\\]^_`{|}~ \t\n\r\x01\x7f end'"##;
    let all_ascii = "(select string_agg(chr(i), '' order by i) from generate_series(1, 127) i)";
    let unicode = r"E'\u00fc\u20ac \U0001F600 \u0080\uffff\U0010ffff'";
    let mut s: Vec<String> = vec![
        format!(
            r#"insert into {T} values ('b 1', 1, 'select', {unicode}, 'x,y', 'a&b=c',
               {awkward}, -12.340, 'NaN', 0.1, true, '2020-02-29', '2020-01-02 03:04:05.123456',
               '2020-06-01 12:00:00.5+03', '04:05:06.7', '04:05:06+02', '1 day 02:03:04',
               '{{"x" : [1, 2]}}', '{{"x" : [1, 2.50]}}', '{{1,NULL,3}}', '{{"a b",NULL,"q\"s",""}}',
               '(1,"h ""i""")', 'happy', 7, 'ab', 'vc', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               '10.0.0.1', '(1.5,2)', '[1,5)', -32768, 9223372036854775807, 42)"#
        ),
        format!(
            r#"insert into {T} ("keyA", "Key B", txt, "a b", "select", f8, f4, d, ts, tstz)
               values (2, '', '', '', null, 'Infinity', '-0', '0044-03-15 BC', 'infinity',
               '-infinity')"#
        ),
        format!(r#"insert into {T} ("keyA", "Key B", txt) values (3, E'q''uo\\te', {all_ascii})"#),
        format!(r#"insert into {T} ("keyA", "Key B", f8, n) values (4, 'k', '-Infinity', 'NaN')"#),
        format!(r#"insert into {T} ("keyA", "Key B", f8, f4) values (5, 'k', 1e-10, 1e30)"#),
        // changed columns only in sqltriga, NULLs set, nothing changed, a key with quotes
        format!(r#"update {T} set txt = 'changed', n = null, "select" = 'x' where "keyA" = 1"#),
        format!(r#"update {T} set txt = txt where "keyA" = 1"#),
        format!(r#"update {T} set "a b" = 'v', jb = '{{"y": null}}' where "keyA" = 3"#),
        format!(r#"update {T} set "keyA" = 9 where "keyA" = 2"#),
        // output depends on the session's settings
        "set datestyle = 'SQL, DMY'".into(),
        "set timezone = 'America/New_York'".into(),
        "set intervalstyle = 'postgres_verbose'".into(),
        "set extra_float_digits = 0".into(),
        "set bytea_output = 'escape'".into(),
        format!(r#"update {T} set f8 = 0.1, tm = '23:59:59.999999' where "keyA" = 1"#),
        format!(
            r#"insert into {T} select 'k6', 6, "select", "Ünï", "col,comma", "a b", txt, n, f8, f4, b, d, ts, tstz, tm, tmtz, iv, j, jb, arr, tarr, comp, m, dom, ch, vc, by, u, ip, pt, rg, i2, i8, o from {T} where "keyA" = 1"#
        ),
        "set timezone = 'Asia/Kolkata'".into(),
        "set datestyle = 'German'".into(),
        format!(r#"delete from {T} where "keyA" = 6"#),
        "reset datestyle".into(),
        "reset timezone".into(),
        "reset intervalstyle".into(),
        "reset extra_float_digits".into(),
        "reset bytea_output".into(),
        format!(r#"delete from {T} where "keyA" in (1, 3)"#),
        format!(r#"update {T} set "Key B" = 'moved' where "keyA" = 4"#),
        // tables without a primary key: inserts only
        "insert into nopk values (1, 'x'), (null, null)".into(),
        "update nopk set b = 'y'".into(),
        "delete from nopk".into(),
        // a partition reports itself
        "insert into parted values (5, 'p')".into(),
        "update parted set v = 'q'".into(),
        "delete from parted".into(),
    ];
    s.push(format!("select count(*) from {T}"));
    s
}

/// Every common type with awkward values, odd identifiers, NULLs and empty strings, under
/// several DateStyle/TimeZone/IntervalStyle/extra_float_digits/bytea_output settings;
/// tables without a primary key; partitions.
#[tokio::test]
async fn rows_are_encoded_like_the_extension() {
    let ext = same_as_extension(TYPES_SETUP, &types_script()).await;
    // spot checks of the formats (the comparison above is the real test)
    for needle in [
        r#"Some("I:keyA,Key B")"#,
        r#"Some("{\"op\":\"INSERT\",\"table\":[\"Odd Sch\",\"Tab \\\"Q\\\" 1\"],\"pkey\":[\"keyA\",\"Key B\"]}")"#,
        r#"Some("Odd Sch.Tab \"Q\" 1")"#,
        "Key+B=b+1&keyA=1&select=select&%c3%9cn%c3%af=%c3%bc%e2%82%ac+%f0%9f%98%80",
        r#"\"n\":\"-12.340\",\"f8\":\"NaN\",\"f4\":\"0.1\",\"b\":true,\"d\":\"2020-02-29\""#,
        "error XX000 Update/Delete on table without pkey",
        r#"Some("I:")"#,
        r#"Some("public.parted_1")"#,
    ] {
        assert!(
            has(&ext, needle),
            "the extension's transcript lacks {needle}"
        );
    }
}

const PLAIN_SETUP: &[&str] = &[
    "create type mood as enum ('sad', 'happy')",
    "create type pair as (x int, y text)",
    "create domain posint as int check (value > 0)",
    // Plain names and no arguments but the queue, SKIP and backup: the triggers' common case,
    // which reads the row without a catalog query or dynamic statement (every common type).
    "create table p (k text, id int, txt text, n numeric, f8 float8, f4 float4, b bool, d date,
        ts timestamp, tstz timestamptz, tm time, tmtz timetz, iv interval, j json, jb jsonb,
        arr int[], comp pair, m mood, dom posint, ch char(4), vc varchar(10), by bytea, u uuid,
        ip inet, pt point, rg int4range, i2 int2, i8 int8, o oid, primary key (id, k))",
    "create trigger j after insert or update or delete on p for each row execute procedure pgq.jsontriga('trg')",
    "create trigger l after insert or update or delete on p for each row execute procedure pgq.logutriga('trg')",
    "create trigger s after insert or update or delete on p for each row execute procedure pgq.sqltriga('trg', 'backup')",
    "create table q (a int, b text)",
    "create trigger l after insert or delete on q for each row execute procedure pgq.logutriga('trg')",
    "create trigger s after insert or delete on q for each row execute procedure pgq.sqltriga('trg')",
    "create table sk (a int primary key, b text)",
    "create trigger k before insert on sk for each row execute procedure pgq.logutriga('trg', 'backup', 'SKIP')",
    "create table r (a int primary key)",
    "create trigger x after insert on r for each row execute procedure pgq.logutriga('trg', 'SKIP')",
    // Text keys and values around the splitting of the row's text form with string
    // functions (quotes, commas, backslashes, the bytes 0x01 and 0x03, empty strings);
    // logutriga's updates take the common case too when the key prints exactly.
    "create table w (k text primary key, a text, b text, n int)",
    "create trigger l after insert or update or delete on w for each row execute procedure pgq.logutriga('trg', 'backup')",
    "create trigger s after insert or update or delete on w for each row execute procedure pgq.sqltriga('trg')",
    "create table wn (k numeric primary key, a text)",
    "create trigger l after insert or update or delete on wn for each row execute procedure pgq.logutriga('trg')",
];

fn plain_script() -> Vec<String> {
    let awkward = r##"E' !"#$%&''()*+,-./:;<=>?@[\\]^_`{|}~ \t\n\r\x01\x02\x03\x04\x7f end'"##;
    let unicode = r"E'\u00fc\u20ac \U0001F600 \u0080\uffff\U0010ffff'";
    let all = "k, id, txt, n, f8, f4, b, d, ts, tstz, tm, tmtz, iv, j, jb, arr, comp, m, dom, ch, vc, by, u, ip, pt, rg, i2, i8, o";
    let mut s: Vec<String> = vec![
        format!(
            r#"insert into p ({all}) values ('a b', 1, {awkward}, -12.340, 'NaN', 0.1, true, '2020-02-29',
               '2020-01-02 03:04:05.123456', '2020-06-01 12:00:00.5+03', '04:05:06.7', '04:05:06+02',
               '1 day 02:03:04', ' {{"x" : [1, 2]}} ', '{{"x" : [1, 2.50], "s": "q\"s"}}', '{{1,NULL,3}}',
               '(1,"h ""i""")', 'happy', 7, 'ab', 'vc', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               '10.0.0.1', '(1.5,2)', '[1,5)', -32768, 9223372036854775807, 42)"#
        ),
        format!(
            r#"insert into p (k, id, txt, f8, f4, b, d, ts, tstz, j, jb) values ('', 2, {unicode}, '-0', 0,
               false, '0044-03-15 BC', 'infinity', '-infinity', '"s"', '"s"')"#
        ),
        r#"insert into p (k, id, f8, f4, n, txt, jb) values ('k', 3, '-Infinity', 1e30, 'NaN', 'NULL', 'null')"#.into(),
        "insert into p (k, id, f8, f4, txt) values ('k', 4, 1e-10, '-0', '')".into(),
        "set datestyle = 'SQL, DMY'".into(),
        "set timezone = 'Asia/Kolkata'".into(),
        "set intervalstyle = 'postgres_verbose'".into(),
        "set extra_float_digits = 0".into(),
        "set bytea_output = 'escape'".into(),
        format!("insert into p ({all}) select 'k5', 5, txt, n, 0.10000000000000002, f4, b, d, ts, tstz, tm, tmtz, iv, j, jb, arr, comp, m, dom, ch, vc, by, u, ip, pt, rg, i2, i8, o from p where id = 1"),
        "set datestyle = 'German'".into(),
        "delete from p where id in (1, 5)".into(),
        "reset datestyle".into(),
        "reset timezone".into(),
        "reset intervalstyle".into(),
        "reset extra_float_digits".into(),
        "reset bytea_output".into(),
        "update p set txt = 'u' where id = 2".into(),
        "delete from p".into(),
        "table p".into(),
        "insert into q values (1, 'x'), (null, null)".into(),
        "delete from q".into(),
        "table q".into(),
        "insert into r values (1)".into(),
        "insert into sk values (1, 'a b')".into(),
        "table sk".into(),
    ];
    s.extend(owned(&[
        r#"insert into w values ('k 1', 'a\b', 'x(y) z', 1), (E'k\\2', E'tab\there', '50% off+1:2', null),
            ('k''3', 'ü€', 'a/b@c', 3), ('k4', 'a,b', 'q\"r', 4), ('k5', E'\x03x', null, 5),
            ('k6', E'\x01', 'x', 6), ('k7', '', null, null), ('k8', null, null, null), ('(k9)', '\\', ' ', -9),
            ('k,10', '(1,2)', 'y, z', 10)"#,
        "update w set a = 'new val:1' where k = 'k 1'",
        "update w set b = 'c,d' where k = 'k5'",
        "update w set n = n + 1",
        "update w set k = 'moved' where k = 'k8'",
        "update w set k = k where k = 'k8'",
        r"delete from w where k in ('k 1', E'k\\2', 'k''3', '(k9)')",
        "delete from w",
        "insert into wn values (1.0, 'a'), (2, 'b')",
        "update wn set k = 1.00 where k = 1",
        "update wn set k = 3 where k = 2",
        "delete from wn",
    ]));
    // several rows in one statement, a statement per row, and both in one transaction
    s.push("insert into q select g, 'r' || g from generate_series(1, 3) g".into());
    s.push("begin".into());
    s.push("insert into q values (4, 'a')".into());
    s.push("insert into q values (5, 'b')".into());
    s.push("commit".into());
    s
}

/// The common case (plain names, no arguments but the queue, SKIP and backup) queues what
/// the extension queues for every common type, awkward values and session settings.
#[tokio::test]
async fn common_case_rows_are_encoded_like_the_extension() {
    let ext = same_as_extension(PLAIN_SETUP, &plain_script()).await;
    assert!(has(&ext, r#"Some("I:id,k")"#));
    assert!(has(&ext, "error XX000 Update/Delete on table without pkey"));
    assert!(has(
        &ext,
        "error XX000 SKIP does not work in AFTER trigger."
    ));
}

/// A session that changed a table (columns renamed, added, dropped, retyped; the primary
/// key replaced) queues events of the changed table at once: what the triggers know about
/// a table is not kept from one statement to the next.
#[tokio::test]
async fn table_changes_in_a_session_are_seen() {
    let setup = &[
        "create table t (id int primary key, a text, b int)",
        "create trigger l after insert or update or delete on t for each row execute procedure pgq.logutriga('trg')",
        "create trigger s after insert or update or delete on t for each row execute procedure pgq.sqltriga('trg')",
        "create trigger j after insert or update or delete on t for each row execute procedure pgq.jsontriga('trg')",
    ];
    let script = owned(&[
        "insert into t values (1, 'x', 1)",
        "alter table t rename column a to a2",
        "insert into t values (2, 'x', 2)",
        "alter table t add column c bool default true",
        "insert into t values (3, 'x', 3)",
        "alter table t drop column b",
        "insert into t values (4, 'x')",
        "alter table t alter column c type text",
        "insert into t values (5, 'x')",
        "alter table t drop constraint t_pkey",
        "alter table t add primary key (a2, id)",
        "insert into t values (6, 'y')",
        "delete from t where id = 6",
        "alter table t drop constraint t_pkey",
        "insert into t values (7, 'z')",
        "delete from t where id = 7",
        "begin",
        "insert into t values (8, 'q')",
        "alter table t rename column a2 to a3",
        "insert into t values (9, 'q')",
        "commit",
    ]);
    let ext = same_as_extension(setup, &script).await;
    assert!(has(&ext, r#"Some("I:a2,id")"#));
}

const CHANGES_SETUP: &[&str] = &[
    "create domain dnum as numeric",
    "create domain darr as numeric[]",
    "create type cnum as (a numeric, b text)",
    "create type cpt as (a point, b int)",
    "create type cna as (a numeric[], b text)",
    "create type en as enum ('a', 'b')",
    // every column but x prints differently after the updates below while (for most
    // types) staying equal
    "create table t (id numeric primary key, x text, n numeric, f8 float8, f4 float4,
        dn dnum, da darr, na numeric[], fa float8[], pa point[], cn cnum, cp cpt, cna cna,
        iv interval, jb jsonb, j json, bx box, pt point, e en, r numrange, ch char(3),
        ts tsvector, _pgq_ev_extra3 text)",
    "insert into t values (1.0, 'x', 1.0, 0.1, 1.5, 1.0, '{1.0}', '{1.0}', '{0.1}',
        '{\"(1,1)\"}', '(1.0,a)', '(\"(0.1,0)\",1)', '(\"{1.0}\",a)', '1 day', '{\"a\": 1.0}',
        '{}', '(0,0),(1,1)', '(0.1,0)', 'a', '[1.0,2.0)', 'ab', 'a b', 'm')",
    "create trigger l after update on t for each row execute procedure pgq.logutriga('trg', 'ignore=x', 'ev_extra4=x')",
    "create trigger s after update on t for each row execute procedure pgq.sqltriga('trg', 'ev_extra4=x')",
];

/// logutriga (ignore=x) queues an update only if a column besides x changed, sqltriga
/// lists the changed columns: equal values count as unchanged for types with an equality
/// (but arrays compare as text), other types compare as text.
#[tokio::test]
async fn updates_count_as_changes_like_the_extension() {
    let mut script: Vec<String> = [
        ("n", "1.00"),
        ("f8", "'-0'"),
        ("f4", "'1.50'"),
        ("dn", "1.00"),
        ("da", "'{1.00}'"),
        ("na", "'{1.00}'"),
        ("fa", "'{0.10}'"),
        ("pa", r#"'{"(1,1)"}'"#),
        ("cn", "'(1.00,a)'"),
        ("cna", r#"'("{1.00}",a)'"#),
        ("iv", "'24 hours'"),
        ("jb", r#"'{"a": 1.00}'"#),
        ("j", "'{ }'"),
        ("bx", "'(1,1),(2,2)'"),
        ("bx", "'(2,2),(1,1)'"),
        ("pt", "'(0.1,-0)'"),
        ("e", "'a'"),
        ("r", "'[1.00,2.0)'"),
        ("ch", "'ab '"),
        ("ts", "'b a'"),
        ("_pgq_ev_extra3", "'magic'"),
        ("cn", "'(1.0,)'"),
        ("cn", "'(1.00,)'"),
        ("cn", "null"),
        ("cn", "'(,)'"),
        ("cn", "null"),
        ("id", "1.00"),
        ("id", "2"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (col, val))| format!("update t set x = 'x{i}', {col} = {val}"))
    .collect();
    // values that print the same but differ
    script.push("set extra_float_digits = 0".into());
    for (i, (col, val)) in [
        ("f8", "0.10000000000000002"),
        ("fa", "'{0.10000000000000002}'"),
        ("cp", r#"'("(0.10000000000000002,0)",1)'"#),
        ("pt", "'(0.10000000000000002,0)'"),
    ]
    .iter()
    .enumerate()
    {
        script.push(format!("update t set x = 'y{i}', {col} = {val}"));
    }
    script.push("reset extra_float_digits".into());
    script.push("update t set x = 'z'".into());
    let ext = same_as_extension(CHANGES_SETUP, &script).await;
    for needle in [
        "x='x0' where id='1.0'",                   // numeric 1.0 -> 1.00: equal
        "x='x5',na='{1.00}' where id='1.0'",       // numeric[]: compared as text
        "x='x8' where id='1.0'",                   // composite: equal fields
        "x='x13',bx='(2,2),(1,1)' where id='1.0'", // box: = compares areas, not used
    ] {
        assert!(
            has(&ext, needle),
            "the extension's transcript lacks {needle}"
        );
    }
    assert!(has(&ext, "error XX000 primary key update not allowed"));
}

/// Table of the argument tests: a key, text, a mixed-case name, an int, a name with a
/// space and a numeric.
const ARGS_SETUP: &[&str] = &[
    r#"create table t (id int primary key, a text, "B" text, c int, "x y" int, n numeric)"#,
    "create table nopk (id int, a text)",
];

/// Trigger timing and arguments after the queue name.
const ARG_CASES: &[(&str, &str)] = &[
    ("after", ""),
    ("before", ""),
    ("before", "'SKIP'"),
    ("after", "'SKIP'"),
    ("after", "'backup'"),
    ("before", "'deny'"),
    ("after", "'ignore=a'"),
    ("after", "'ignore=a, c'"),
    ("after", "'ignore= c'"),
    ("after", "'ignore=aa,a'"),
    ("after", "'ignore=A'"),
    ("after", r#"'ignore=,a,,"c"'"#),
    ("after", "'ignore=x y'"),
    ("after", "'ignore=a', 'ignore=c'"),
    ("after", "'ignore='"),
    ("after", "'ignore=n', 'backup'"),
    ("after", "'pkey=c,id'"),
    ("after", "'pkey=B,id'"),
    ("after", "'pkey= c'"),
    ("after", "'pkey=id c'"),
    ("after", "'pkey=id ,c '"),
    ("after", "'pkey=id,,c'"),
    ("after", "'pkey=x y'"),
    ("after", "'pkey=x  y'"),
    ("after", "'pkey=nosuch'"),
    ("after", "'pkey='"),
    ("after", "'pkey=a'"),
    ("after", "'pkey=id', 'pkey=c'"),
    ("after", "'when=c > 5'"),
    ("after", "'when=a = ''a a'''"),
    ("after", "'when=null'"),
    ("after", "'when=c'"),
    ("after", "'when=c > null'"),
    ("after", "'when='"),
    ("after", "'when=true from generate_series(1, 2)'"),
    ("after", "'when=false', 'when=true'"),
    ("before", "'when=false', 'SKIP'"),
    ("after", "'when=c > 0', 'ignore=a'"),
    (
        "after",
        "'ev_type=a || ''!''', 'ev_data=\"B\"', 'ev_extra1=c + 1', 'ev_extra2=n * 2', 'ev_extra3=B', 'ev_extra4=null'",
    ),
    ("after", "'ev_type=1', 'ev_type=(', 'ev_data=id::text'"),
    ("after", "'ev_extra1=', 'ev_extra2=-- nothing', 'ev_extra3=c;'"),
    ("after", "'ev_extra1=a where false'"),
    ("after", "'ev_extra1=cast(a as int)', 'when=c > 100'"),
    ("after", "'ev_extra1=1 +', 'ignore=a'"),
    ("after", "'ev_extra1=nosuch', 'deny'"),
    ("after", "'backup', 'SKIP', 'deny'"),
    ("after", "'deny', 'bogus'"),
    ("after", "'bogus', 'ev_type=\"a\"'"),
    ("after", "'ev_type=\"a\"', 'bogus'"),
    ("after", "'skip'"),
    ("after", "'Backup'"),
    ("after", "'when'"),
    ("after", "'ev_extra5=1'"),
    ("after", "' SKIP'"),
];

/// Every argument case with each trigger, on a table with a key and one without: the
/// events, the rows a BEFORE trigger let through, and the errors.
#[tokio::test]
async fn trigger_arguments_work_like_the_extension() {
    let mut script = Vec::new();
    for (timing, args) in ARG_CASES {
        script.push(RECONNECT.to_string());
        for func in ["logutriga", "sqltriga", "jsontriga"] {
            let args = if args.is_empty() {
                String::new()
            } else {
                format!(", {args}")
            };
            script.extend([
                format!("create trigger x {timing} insert or update or delete on t for each row execute procedure pgq.{func}('trg'{args})"),
                "insert into t values (1, 'a a', 'B&b', 3, 4, 1.0)".into(),
                "update t set a = 'new', c = 30 where id = 1".into(),
                "update t set a = 'only a' where id = 1".into(),
                r#"update t set "B" = null, "x y" = null where id = 1"#.into(),
                "update t set n = 1.00 where id = 1".into(),
                "update t set c = null where id = 1".into(),
                "update t set id = 2 where id = 1".into(),
                "delete from t where id = 1".into(),
                "table t".into(),
                "drop trigger x on t".into(),
                "delete from t".into(),
                format!("create trigger x {timing} insert or update or delete on nopk for each row execute procedure pgq.{func}('trg'{args})"),
                "insert into nopk values (1, 'a')".into(),
                "update nopk set a = 'b'".into(),
                "delete from nopk".into(),
                "drop trigger x on nopk".into(),
                "delete from nopk".into(),
            ]);
        }
    }
    let ext = same_as_extension(ARGS_SETUP, &script).await;
    for needle in [
        "error XX000 SKIP does not work in AFTER trigger.",
        "error XX000 Table 'public.t' to queue 'trg': change not allowed (INSERT)",
        "error XX000 bad param to pgq trigger",
        "error XX000 when= query result must be boolean, got=23",
        "error XX000 when= should not be NULL",
        "error XX000 Expect 1 row from override query, got 0",
        "error XX000 logtriga: Unexpected NULL key value",
        "error XX000 QB: syntax error",
        r#"Some("I:id,,c")"#,
    ] {
        assert!(
            has(&ext, needle),
            "the extension's transcript lacks {needle}"
        );
    }
}

/// Expressions for ev_extra3=, over the row of `t` below.
const EXPRESSIONS: &[&str] = &[
    "a",
    "A",
    "b",
    "B",
    r#""B""#,
    r#""a""#,
    "c+1",
    "c + 1",
    "x y",
    r#""x y""#,
    "t.c",
    "c::text",
    "'c'",
    "'a' || a",
    "abs(c)",
    "id",
    "Q",
    r#""Q""""#,
    "$1",
    "$2 + c",
    "c + $1",
    "upper(a)",
    "a is null",
    "new.a",
    "c.a",
    r"E'x\\'",
    "a--c",
    "(a)",
    "a||a",
    "1.5",
    "true",
    "c .a",
    "c. a",
    "(c).a",
    "abs (c)",
    "c1",
    "1c",
    "a$b",
    "ü",
    "aü",
    "/* c */ c",
    "$$c$$",
    "$x$c$x$",
    "$_$x$_$",
    r"E'\\'c'",
    r"E'\'c'",
    r"e'x\'c'",
    "'it''s' || a",
    "U&'c'",
    r#"U&"c""#,
    "c::int::text",
    "a-c",
    "c%2",
    "c#1",
    "[c]",
    "{c}",
    r#"""#,
    "'",
    "c;",
    "c;;",
    ";",
    "c ; -- x",
    "c = any(array[1,3])",
    "a ~ $$a$$",
    "B'101'",
    "X'ff'",
    r#"a||""#,
    "case when c>1 then a else B end",
    ":c",
    "@c",
    "1.5e3",
    "c.",
    ".c",
    "c..a",
    "_c",
    "B_",
    "?",
    r"\",
    "`c`",
    "$",
    ".5",
    "1.",
    "1..2",
    "c.1",
    "$b$",
    "a $b",
    "'abc' 'def'",
    "n'x'",
    "b'1'",
    r#""""#,
    r#""a"#,
    r#"a"b""#,
    "/* unterminated",
    "--",
    "/* /* nested */ c */ c",
    "1.5.c",
    "c ::c",
    "$1a",
    "$$unterminated",
    "$a$ c $a$ || c",
    "c/*x*/+c",
    "c-1",
    "1e",
    "1e+5",
    "1ec",
    "0x1f",
    "c.c",
    "x.y.c",
    "1e5c",
    "1ea",
    "1.c",
    "1.5e5.c",
    "1e+c",
    "c!",
    r#"c"""#,
    r#""zz""#,
    r#""a"b"#,
    r#"c""#,
    r#"c"+c"#,
    r#""+c"#,
    r#"""+c"#,
    r#""""+c"#,
    "c$",
    "c$1",
    "B.c",
    r#"x."B""#,
    r#""x".c"#,
    "c'a'",
    "c -- comment",
    "a || E'\\n'",
    "c\t+\t1",
    "a where false",
    "1 from generate_series(1,2)",
    "(select a)",
    "row(a, c)",
    "array[a, B]",
    "1/0",
    "now() is not null",
    "'2020-01-01 10:00+00'::timestamptz",
    "'ab '::char(3)",
    "c > 2",
    "nosuch(a)",
];

/// when= and ev_*= expressions are SQL over bare, case-sensitive column names, split into
/// tokens the extension's way (strings, comments, dollar quotes, qualified and quoted
/// names, $n), with the same errors for broken ones.
#[tokio::test]
async fn expressions_are_read_like_the_extension() {
    let setup =
        &[r#"create table t (id int primary key, a text, "B" text, c int, "x y" int, "Q""" int)"#];
    let mut script = Vec::new();
    for (i, e) in EXPRESSIONS.iter().enumerate() {
        if i % 10 == 0 {
            script.push(RECONNECT.to_string());
        }
        let e = e.replace('\'', "''");
        script.extend([
            format!("create trigger x after insert on t for each row execute procedure pgq.logutriga('trg', 'ev_extra3={e}')"),
            "insert into t values (1, 'aa', 'bb', 3, 4, 5)".into(),
            "drop trigger x on t".into(),
            "delete from t".into(),
        ]);
    }
    let ext = same_as_extension(setup, &script).await;
    assert!(has(&ext, r#"Some("aaa"), None]"#), "'a' || a");
    assert!(has(&ext, "error 42703 column \"a\" does not exist"), "A");
    assert!(has(&ext, "error 42P02 there is no parameter $1"), "$1");
}

/// TRUNCATE triggers queue 'R' events (jsontriga: op TRUNCATE), refuse row-only
/// arguments; other statement triggers and missing queue names are errors.
#[tokio::test]
async fn truncate_and_statement_triggers_work_like_the_extension() {
    let setup = &[
        "create table t (id int primary key, a text)",
        "create table nopk (a text, _pgq_ev_type text)",
    ];
    let mut script = owned(&[
        "create trigger j after truncate on t for each statement execute procedure pgq.jsontriga('trg')",
        "create trigger l after truncate on t for each statement execute procedure pgq.logutriga('trg')",
        "create trigger s after truncate on t for each statement execute procedure pgq.sqltriga('trg')",
        "create trigger b before truncate on t for each statement execute procedure pgq.logutriga('trg', 'SKIP')",
        "insert into t values (1, 'a')",
        "truncate t",
        "table t",
        "create trigger j after truncate on nopk for each statement execute procedure pgq.jsontriga('trg')",
        "create trigger l after truncate on nopk for each statement execute procedure pgq.logutriga('trg')",
        "truncate nopk",
        "drop trigger j on nopk",
        "drop trigger l on nopk",
    ]);
    for args in [
        "'SKIP'",
        "'deny'",
        "'backup'",
        "'ignore=a'",
        "'ignore='",
        "'pkey=a'",
        "'pkey='",
        "'when=true'",
        "'ev_type=1'",
        "'ev_extra1=\"a\"'",
        "'bogus', 'ev_type=1'",
        "'ev_type=1', 'bogus'",
        "'pkey=a', 'ev_type=1'",
        "'pkey=a', 'ignore=a'",
        "'backup', 'pkey=a'",
        "'backup', 'SKIP', 'deny'",
    ] {
        for func in ["logutriga", "sqltriga", "jsontriga"] {
            script.extend([
                format!("create trigger x after truncate on nopk for each statement execute procedure pgq.{func}('trg', {args})"),
                "truncate nopk".into(),
                "drop trigger x on nopk".into(),
            ]);
        }
    }
    for func in ["logutriga", "sqltriga", "jsontriga"] {
        script.extend([
            format!("create trigger x after insert on nopk for each statement execute procedure pgq.{func}('trg')"),
            "insert into nopk values ('a')".into(),
            "drop trigger x on nopk".into(),
            format!("create trigger x after insert on nopk for each row execute procedure pgq.{func}()"),
            "insert into nopk values ('a')".into(),
            "drop trigger x on nopk".into(),
            format!("create trigger x after insert on nopk for each statement execute procedure pgq.{func}()"),
            "insert into nopk values ('a')".into(),
            "drop trigger x on nopk".into(),
            format!("create trigger x after insert on nopk for each row execute procedure pgq.{func}('nosuch')"),
            "insert into nopk values ('a')".into(),
            "drop trigger x on nopk".into(),
        ]);
    }
    let ext = same_as_extension(setup, &script).await;
    for needle in [
        r#"event [Some("R"), Some(""), Some("public.t"), None, None, None]"#,
        r#"Some("{\"op\":\"TRUNCATE\",\"table\":[\"public\",\"t\"],\"pkey\":[\"id\"]}"), Some("{}")"#,
        "error XX000 Custom expressions do not make sense for truncater trigger",
        "error XX000 Column ignore does not make sense for truncate trigger",
        "error XX000 Custom pkey_list does not make sense for truncate trigger",
        "error XX000 Backup does not make sense for truncate trigger",
        "error XX000 pgq Ins/Upd/Del trigger must be fired FOR EACH ROW",
        "error XX000 pgq trigger must have destination queue as argument",
    ] {
        assert!(
            has(&ext, needle),
            "the extension's transcript lacks {needle}"
        );
    }
}

/// Ordinary triggers do not fire on replicas at all; ENABLE ALWAYS/REPLICA ones do, and
/// then only session_replication_role = local turns the pgq triggers off (even deny and
/// argument checks).
#[tokio::test]
async fn replication_roles_work_like_the_extension() {
    let setup = &[
        "create table t (id int primary key, a text)",
        "create trigger j after insert or update or delete on t for each row execute procedure pgq.jsontriga('trg')",
        "create trigger l after insert or update or delete on t for each row execute procedure pgq.logutriga('trg')",
        "create trigger s after insert or update or delete on t for each row execute procedure pgq.sqltriga('trg')",
        "alter table t enable always trigger j",
        "alter table t enable replica trigger l",
        "alter table t enable always trigger s",
        "create table sk (id int primary key)",
        "create trigger b before insert on sk for each row execute procedure pgq.sqltriga('trg', 'SKIP')",
        "alter table sk enable always trigger b",
        "create table u (id int primary key)",
        "create trigger d before insert or update or delete on u for each row execute procedure pgq.logutriga('trg', 'deny')",
        "create trigger x after insert on u for each statement execute procedure pgq.logutriga('trg', 'bogus')",
        "alter table u enable always trigger d",
        "alter table u enable always trigger x",
        "create trigger tr after truncate on u for each statement execute procedure pgq.logutriga('trg')",
        "alter table u enable always trigger tr",
    ];
    let mut script = Vec::new();
    for role in ["replica", "local", "origin"] {
        script.extend([
            format!("set session_replication_role = {role}"),
            "insert into t values (1, 'a')".into(),
            "update t set a = 'x'".into(),
            "delete from t".into(),
            "insert into sk values (1)".into(),
            "table sk".into(),
            "insert into u values (1)".into(),
            "table u".into(),
            "truncate u".into(),
            "reset session_replication_role".into(),
            "truncate t, u, sk".into(),
        ]);
    }
    let ext = same_as_extension(setup, &script).await;
    assert!(has(&ext, r#"Some("I:id"), Some("id=1&a=a")"#));
}

/// The deprecated _pgq_ev_* columns set event fields (expressions win over them) and are
/// left out of the row; unknown ones are errors.
#[tokio::test]
async fn magic_columns_work_like_the_extension() {
    let setup = &[
        "create table m (id int primary key, a text, _pgq_ev_type text, _pgq_ev_data text,
            _pgq_ev_extra1 text, _pgq_ev_extra2 text, _pgq_ev_extra3 text, _pgq_ev_extra4 text)",
        "create table m2 (id int primary key, a text, _pgq_ev_extra3 text)",
        "create table bad (id int primary key, a text, _pgq_ev_foo text)",
    ];
    let mut script = Vec::new();
    for func in ["logutriga", "sqltriga", "jsontriga"] {
        for args in ["", ", 'ev_extra3=a'", ", 'ignore='", ", 'backup'"] {
            script.extend([
                format!("create trigger x after insert or update or delete on m for each row execute procedure pgq.{func}('trg'{args})"),
                format!("create trigger x after insert or update or delete on m2 for each row execute procedure pgq.{func}('trg'{args})"),
                format!("create trigger x after insert or update or delete on bad for each row execute procedure pgq.{func}('trg'{args})"),
                "insert into m values (1, 'x', 'TY', 'DA', 'E1', 'E2', 'E3', 'E4'), (2, 'y', null, null, null, null, null, null)".into(),
                "update m set a = 'z' where id = 1".into(),
                "update m set _pgq_ev_type = 'T2' where id = 1".into(),
                "delete from m".into(),
                "insert into m2 values (1, 'x', 'E3')".into(),
                "update m2 set _pgq_ev_extra3 = 'new'".into(),
                "update m2 set a = 'b'".into(),
                "delete from m2".into(),
                "insert into bad values (1, 'x', 'f')".into(),
                "update bad set a = 'y'".into(),
                "drop trigger x on m".into(),
                "drop trigger x on m2".into(),
                "drop trigger x on bad".into(),
                "delete from m".into(),
                "delete from m2".into(),
                "delete from bad".into(),
            ]);
        }
    }
    let ext = same_as_extension(setup, &script).await;
    assert!(has(&ext, "error XX000 Unknown magic column: _pgq_ev_foo"));
    assert!(has(
        &ext,
        r#"event [Some("TY"), Some("DA"), Some("E1"), Some("E2"), Some("E3"), Some("E4")]"#
    ));
}

/// Events of the triggers reach consumers through batches like any other event.
#[tokio::test]
async fn trigger_events_reach_consumers() {
    async fn consumed(backend: Backend) -> Vec<(Option<String>, String, [Option<String>; 4])> {
        let db = TestDb::new(backend).await;
        let c = db.connect().await;
        c.query_one("select pgq.create_queue($1)", &[&QUEUE])
            .await
            .unwrap();
        register(&c, QUEUE, "cons").await;
        c.batch_execute(
            "create table t (id int primary key, v text);
             create trigger l after insert or update or delete on t
                 for each row execute procedure pgq.logutriga('trg', 'backup');
             begin;
             insert into t values (1, 'a'), (2, 'b');
             update t set v = 'c' where id = 1;
             delete from t where id = 2;
             commit;",
        )
        .await
        .unwrap();
        tick(&c, QUEUE).await;
        consume_all(&c, QUEUE, "cons")
            .await
            .into_iter()
            .flat_map(|(_, evs)| evs)
            .map(|e| (e.ev_type.clone(), e.data().to_string(), e.extra.clone()))
            .collect()
    }
    let (bundled, extension) =
        tokio::join!(consumed(Backend::Bundled), consumed(Backend::Extension));
    assert_eq!(bundled, extension);
    assert_eq!(
        bundled
            .iter()
            .map(|(t, d, _)| format!("{} {d}", t.as_deref().unwrap()))
            .collect::<Vec<_>>(),
        [
            "I:id id=1&v=a",
            "I:id id=2&v=b",
            "U:id id=1&v=c",
            "D:id id=2&v=b"
        ]
    );
}
