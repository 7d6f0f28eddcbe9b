//! What a task's raw SQL may not do, decided by PostgreSQL's own parser (libpg_query).
//!
//! A transactional task runs inside a node transaction that also records its result, so
//! its SQL must not end that transaction, open a nested one or prepare it for two-phase
//! commit: the statements after a COMMIT would run outside the task's transaction, its
//! statement timeout and its exactly-once record. Those statements are refused before
//! anything runs, at the top level and inside PL/pgSQL `DO` blocks. `COPY ... FROM STDIN`
//! and `TO STDOUT` would hand the connection's protocol to the task; they are refused for
//! every task.
//!
//! This is the first line of defence. SQL the parser cannot read is left to the server,
//! which parses the whole string before running any of it and reports its own error;
//! whatever still ends the transaction is caught after the task by the node's door
//! (`pgfan_node.task_finish` compares transaction ids).

use pg_query::protobuf::TransactionStmtKind;
use pg_query::NodeEnum;

/// Why the task's SQL is refused, or Ok when it may run. `tx`: the task runs in a
/// transaction of the node's.
pub fn check(sql: &str, tx: bool) -> Result<(), String> {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return Ok(());
    };
    for (i, raw) in parsed.protobuf.stmts.iter().enumerate() {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        let n = i + 1;
        match node {
            NodeEnum::TransactionStmt(t) if tx => {
                return Err(refused_tx(transaction_word(t.kind), n));
            }
            NodeEnum::DoStmt(d) if tx => {
                if let Some(word) = do_block_control(&d.args) {
                    return Err(format!(
                        "a transactional task cannot run {word} (in the DO block of statement {n}): {TX_HINT}"
                    ));
                }
            }
            NodeEnum::CopyStmt(c) if c.filename.is_empty() && !c.is_program => {
                let way = if c.is_from { "FROM STDIN" } else { "TO STDOUT" };
                return Err(format!(
                    "a task cannot run COPY {way} (statement {n}): the node's connection carries no copy data; \
                     use a copy task or INSERT ... SELECT"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

const TX_HINT: &str = "the task runs inside the node's transaction, which also records its \
     result; submit it with tx => false to control transactions itself";

fn refused_tx(word: &str, n: usize) -> String {
    format!("a transactional task cannot run {word} (statement {n}): {TX_HINT}")
}

fn transaction_word(kind: i32) -> &'static str {
    use TransactionStmtKind as K;
    match K::try_from(kind).unwrap_or(K::Undefined) {
        K::TransStmtBegin => "BEGIN",
        K::TransStmtStart => "START TRANSACTION",
        K::TransStmtCommit => "COMMIT",
        K::TransStmtRollback => "ROLLBACK",
        K::TransStmtSavepoint => "SAVEPOINT",
        K::TransStmtRelease => "RELEASE SAVEPOINT",
        K::TransStmtRollbackTo => "ROLLBACK TO SAVEPOINT",
        K::TransStmtPrepare => "PREPARE TRANSACTION",
        K::TransStmtCommitPrepared => "COMMIT PREPARED",
        K::TransStmtRollbackPrepared => "ROLLBACK PREPARED",
        K::Undefined => "a transaction statement",
    }
}

/// COMMIT or ROLLBACK in the body of a PL/pgSQL `DO` block (other languages are not read;
/// the server refuses their transaction control inside a transaction block).
fn do_block_control(args: &[pg_query::protobuf::Node]) -> Option<&'static str> {
    let mut body = None;
    let mut language = "plpgsql".to_string();
    for arg in args {
        let Some(NodeEnum::DefElem(d)) = arg.node.as_ref() else {
            continue;
        };
        let text = d.arg.as_ref().and_then(|a| match a.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        });
        match d.defname.as_str() {
            "as" => body = text,
            "language" => language = text.unwrap_or_default().to_lowercase(),
            _ => {}
        }
    }
    if language != "plpgsql" {
        return None;
    }
    // parse_plpgsql reads function definitions; the body goes in as a string literal
    // (standard_conforming_strings: only quotes need doubling).
    let def = format!(
        "create function pgfan_do() returns void language plpgsql as '{}'",
        body?.replace('\'', "''")
    );
    let tree = pg_query::parse_plpgsql(&def).ok()?;
    find_control(&tree)
}

fn find_control(v: &serde_json::Value) -> Option<&'static str> {
    match v {
        serde_json::Value::Object(map) => {
            if map.contains_key("PLpgSQL_stmt_commit") {
                return Some("COMMIT");
            }
            if map.contains_key("PLpgSQL_stmt_rollback") {
                return Some("ROLLBACK");
            }
            map.values().find_map(find_control)
        }
        serde_json::Value::Array(items) => items.iter().find_map(find_control),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        check(sql, true).expect_err(sql)
    }

    #[test]
    fn transaction_control_is_refused_by_name() {
        let cases = [
            (
                "insert into t values (1); commit; select 1",
                "COMMIT (statement 2)",
            ),
            ("rollback", "ROLLBACK (statement 1)"),
            ("end", "COMMIT (statement 1)"),
            ("abort", "ROLLBACK (statement 1)"),
            ("begin; select 1", "BEGIN (statement 1)"),
            (
                "start transaction isolation level serializable",
                "START TRANSACTION",
            ),
            (
                "savepoint a; select 1; release a",
                "SAVEPOINT (statement 1)",
            ),
            (
                "select 1; release savepoint a",
                "RELEASE SAVEPOINT (statement 2)",
            ),
            ("rollback to a", "ROLLBACK TO SAVEPOINT"),
            ("prepare transaction 'x'", "PREPARE TRANSACTION"),
            ("commit prepared 'x'", "COMMIT PREPARED"),
            ("rollback prepared 'x'", "ROLLBACK PREPARED"),
            ("commit and chain", "COMMIT (statement 1)"),
            ("/* c */ CoMmIt -- x", "COMMIT"),
        ];
        for (sql, want) in cases {
            let err = refused(sql);
            assert!(err.contains(want), "{sql}: {err}");
            assert!(err.contains("tx => false"), "{sql}: {err}");
        }
    }

    #[test]
    fn do_blocks_are_read() {
        let err = refused("do $$ begin insert into t values (1); commit; end $$");
        assert!(
            err.contains("COMMIT (in the DO block of statement 1)"),
            "{err}"
        );
        let err = refused(
            "select 1; do language plpgsql 'begin if true then loop rollback; end loop; end if; end'",
        );
        assert!(
            err.contains("ROLLBACK (in the DO block of statement 2)"),
            "{err}"
        );
        assert!(check("do $$ begin perform 1; end $$", true).is_ok());
        // Quotes inside the body survive the literal it is wrapped in.
        assert!(check("do $$ begin raise notice 'it''s'; end $$", true).is_ok());
    }

    #[test]
    fn ordinary_sql_and_text_that_only_mentions_commit_pass() {
        for sql in [
            "select 'commit; rollback'",
            "select $x$ commit $x$ as commit",
            "create table commit_log (id int)",
            "insert into t values (1); select count(*) from t",
            "copy t to '/tmp/x'",
            "set transaction isolation level repeatable read; select 1",
            "lock table t in exclusive mode",
        ] {
            assert!(check(sql, true).is_ok(), "{sql}");
        }
    }

    #[test]
    fn unparsable_sql_is_left_to_the_server() {
        assert!(check("selec 1; commit", true).is_ok());
    }

    #[test]
    fn tasks_outside_a_transaction_may_control_transactions_but_not_copy_data() {
        assert!(check("begin; insert into t values (1); commit", false).is_ok());
        assert!(check("vacuum t", false).is_ok());
        let err = check("copy t from stdin", false).unwrap_err();
        assert!(err.contains("COPY FROM STDIN (statement 1)"), "{err}");
        let err = check("select 1; copy (select 1) to stdout", true).unwrap_err();
        assert!(err.contains("COPY TO STDOUT (statement 2)"), "{err}");
    }
}
