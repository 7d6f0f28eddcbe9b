//! The master's job, task and result rows after the per-task cost cuts (issue 12): a
//! single-task job's result read from its task (the view pgfan.job_result), the triggers
//! that do what the dropped foreign keys did, and the in-place upgrade of an installation
//! that still has the table pgfan.job_result and the keys.

mod common;

use common::{master_with_nodes, Backend};
use pgfan::install::{self, Role};
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// A running job with one done task per entry of `nodes`, each returning rows (a, b) =
/// (1, 'x'), (2, NULL); returns the job id.
async fn done_job(c: &Client, nodes: &[&str]) -> i64 {
    let job: i64 = c
        .query_one(
            "insert into pgfan.job (kind, target, state, n_tasks) values ('sql', 'n1', 'running', $1)
             returning job_id",
            &[&(nodes.len() as i32)],
        )
        .await
        .unwrap()
        .get(0);
    let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    c.execute(
        "with t as (
             insert into pgfan.task (job_id, node_name, kind, payload, state, result_columns,
                                     result_types, result_rows)
             select $1, n, 'sql', 'x', 'done', array['a', 'b'], array['integer', 'text'], 2
               from unnest($2::text[]) n
             returning task_id)
         insert into pgfan.task_row (task_id, row_no, vals)
         select t.task_id, g, array[g::text, case when g = 1 then 'x' end]
           from t, generate_series(1, 2) g",
        &[&job, &nodes],
    )
    .await
    .unwrap();
    job
}

async fn result(c: &Client, job: i64) -> Vec<Value> {
    c.query("select pgfan.result($1)", &[&job])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn stored_rows(c: &Client, job: i64) -> i64 {
    c.query_one(
        "select count(*) from pgfan.job_result_row where job_id = $1",
        &[&job],
    )
    .await
    .unwrap()
    .get(0)
}

async fn single_task_result_is_read_from_the_task(backend: Backend) {
    let (_db, c) = master_with_nodes(backend).await;
    let single = done_job(&c, &["n1"]).await;
    let double = done_job(&c, &["n1", "n2"]).await;
    let one_by_one = done_job(&c, &["n2"]).await;
    let finished = c
        .query(
            "select * from pgfan.complete_jobs($1)",
            &[&vec![single, double]],
        )
        .await
        .unwrap();
    assert_eq!(finished.len(), 2);
    let state: Option<String> = c
        .query_one("select pgfan.complete_job($1)", &[&one_by_one])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state.as_deref(), Some("done"));

    let rows = [json!({"a": 1, "b": "x"}), json!({"a": 2, "b": null})];
    // The set-based path marks the single-task job and copies nothing; the one-by-one path
    // and the two-task job store their rows; every reader sees the same result.
    assert_eq!(stored_rows(&c, single).await, 0);
    assert_eq!(stored_rows(&c, one_by_one).await, 2);
    assert_eq!(stored_rows(&c, double).await, 4);
    assert_eq!(result(&c, single).await, rows);
    assert_eq!(result(&c, one_by_one).await, rows);
    assert_eq!(result(&c, double).await, [&rows[..], &rows[..]].concat());
    let marked: Vec<(i64, bool)> = c
        .query(
            "select job_id, result_in_task from pgfan.job where job_id = any($1) order by job_id",
            &[&vec![single, double, one_by_one]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        marked,
        [(single, true), (double, false), (one_by_one, false)]
    );
    let view: Vec<(i32, Value)> = c
        .query(
            "select row_no, row_data from pgfan.job_result where job_id = $1 order by row_no",
            &[&single],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(view, [(1, rows[0].clone()), (2, rows[1].clone())]);

    // The owner still writes through the view, into the stored rows.
    c.execute(
        "insert into pgfan.job_result (job_id, row_no, row_data) values ($1, 3, '{\"a\": 3}')",
        &[&one_by_one],
    )
    .await
    .unwrap();
    assert_eq!(stored_rows(&c, one_by_one).await, 3);
    c.execute(
        "delete from pgfan.job_result where job_id = $1 and row_no = 3",
        &[&one_by_one],
    )
    .await
    .unwrap();
    assert_eq!(result(&c, one_by_one).await, rows);
}

async fn deletes_and_renames_reach_the_tasks(backend: Backend) {
    let (_db, c) = master_with_nodes(backend).await;
    let gone = done_job(&c, &["n1", "n2"]).await;
    let kept = done_job(&c, &["n1"]).await;
    c.query(
        "select * from pgfan.complete_jobs($1)",
        &[&vec![gone, kept]],
    )
    .await
    .unwrap();
    let counts = |job: i64| {
        let c = &c;
        async move {
            let r = c
                .query_one(
                    "select (select count(*) from pgfan.task where job_id = $1),
                            (select count(*) from pgfan.task_row r join pgfan.task t using (task_id)
                              where t.job_id = $1),
                            (select count(*) from pgfan.job_result_row where job_id = $1)",
                    &[&job],
                )
                .await
                .unwrap();
            (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2))
        }
    };
    assert_eq!(counts(gone).await, (2, 4, 4));
    let orphan_rows = "select count(*) from pgfan.task_row r
                        where not exists (select 1 from pgfan.task t where t.task_id = r.task_id)";
    c.execute("delete from pgfan.job where job_id = $1", &[&gone])
        .await
        .unwrap();
    assert_eq!(counts(gone).await, (0, 0, 0));
    let orphans: i64 = c.query_one(orphan_rows, &[]).await.unwrap().get(0);
    assert_eq!(
        orphans, 0,
        "the deleted job's task rows went with its tasks"
    );
    assert_eq!(counts(kept).await, (1, 2, 0));

    // A node with tasks cannot be deleted (its partitions gone, the tasks are what stops
    // it); a renamed node keeps its tasks.
    c.execute("delete from pgfan.partition where node_name = 'n1'", &[])
        .await
        .unwrap();
    let err = c
        .execute("delete from pgfan.node where node_name = 'n1'", &[])
        .await
        .expect_err("n1 still has tasks");
    assert_eq!(err.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION));
    c.execute(
        "update pgfan.node set node_name = 'n9' where node_name = 'n1'",
        &[],
    )
    .await
    .unwrap();
    let node: String = c
        .query_one(
            "select node_name from pgfan.task where job_id = $1",
            &[&kept],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(node, "n9");
}

async fn upgrade_keeps_the_stored_results(backend: Backend) {
    let (db, c) = master_with_nodes(backend).await;
    let job = done_job(&c, &["n1", "n2"]).await;
    c.query("select * from pgfan.complete_jobs($1)", &[&vec![job]])
        .await
        .unwrap();
    // Back to the previous version's shape: the table pgfan.job_result and the keys.
    c.batch_execute(
        "drop view pgfan.job_result cascade;
         alter table pgfan.job_result_row rename to job_result;
         alter table pgfan.job_result add constraint job_result_job_id_fkey
             foreign key (job_id) references pgfan.job on delete cascade;
         alter table pgfan.task add constraint task_job_id_fkey
             foreign key (job_id) references pgfan.job on delete cascade;
         alter table pgfan.task add constraint task_node_name_fkey
             foreign key (node_name) references pgfan.node on update cascade;
         alter table pgfan.task_row add constraint task_row_task_id_fkey
             foreign key (task_id) references pgfan.task on delete cascade;
         update pgfan_meta.component set checksum = 'previous' where name = 'pgfan';",
    )
    .await
    .unwrap();
    let mut owner = db.connect().await;
    install::install(&mut owner, Role::Master).await.unwrap();
    let rows = [json!({"a": 1, "b": "x"}), json!({"a": 2, "b": null})];
    assert_eq!(result(&c, job).await, [&rows[..], &rows[..]].concat());
    let keys: i64 = c
        .query_one(
            "select count(*) from pg_constraint
              where contype = 'f' and conrelid in ('pgfan.task'::regclass,
                    'pgfan.task_row'::regclass, 'pgfan.job_result_row'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0);
}

both_backends!(
    single_task_result_is_read_from_the_task,
    deletes_and_renames_reach_the_tasks,
    upgrade_keeps_the_stored_results,
);
