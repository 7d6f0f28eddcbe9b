//! The node's batch executor: copy tasks of a claim run together in one node transaction,
//! a savepoint each. What batching must not change: a failing task fails alone, every
//! other effect commits exactly once with its record, lanes keep their order, and tasks
//! that cannot be batched (`tx=0`, `sql`, timeouts) run beside the batches as before.

mod common;

use common::node_env::{put, sql_task, start_node, stop_node, Env, Pull};
use pgfan::node::NodeConfig;

fn copy(task: i64, data: String, lane: Option<&'static str>) -> Pull<'static> {
    Pull {
        task,
        kind: "copy",
        data,
        lane,
        options: None,
    }
}

async fn states(env: &Env) -> Vec<(i64, String, i32)> {
    env.node
        .connect()
        .await
        .query(
            "select task_id, state, attempts from pgfan_node.task order by task_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn a_failing_task_in_the_middle_of_a_batch_fails_alone() {
    let env = Env::new("b_fail").await;
    env.node_sql("create table items (id int primary key, name text)")
        .await;
    let node = start_node(NodeConfig {
        // One connection: all 60 copies go to as few batches as possible.
        workers: 1,
        copy_tables: vec!["items".into()],
        ..env.config()
    });
    // 20 and 40 fail when their statements run (a value that is no integer, a key
    // taken by 1), 30 when it is planned (no such column).
    let tasks: Vec<Pull> = (1..=60)
        .map(|i| {
            let data = match i {
                20 => "action=ins&id=abc&name=bad".to_string(),
                30 => "action=ins&id=30&nope=1".to_string(),
                40 => "action=ins&id=1&name=again".to_string(),
                _ => format!("action=ins&id={i}&name=n{i}"),
            };
            copy(i, data, None)
        })
        .collect();
    put(&env, &tasks).await;
    env.wait_shipped(&(1..=60).collect::<Vec<_>>()).await;
    for (id, state, attempts) in states(&env).await {
        let want = if [20, 30, 40].contains(&id) {
            "failed"
        } else {
            "done"
        };
        assert_eq!((state.as_str(), attempts), (want, 1), "task {id}");
    }
    let r = env.results().await;
    let err = |id: i64| r[&id].2["error"].as_str().unwrap_or_default().to_string();
    assert!(err(20).contains("22P02"), "{}", err(20));
    assert!(err(30).contains("\"nope\" does not exist"), "{}", err(30));
    assert!(err(40).contains("23505"), "{}", err(40));
    assert_eq!(r[&1].2["rows"], serde_json::json!([["1"]]));
    let rows = env
        .node_count("select count(*) from items where name = 'n' || id")
        .await;
    assert_eq!(rows, 57, "every other row exactly once");
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn batches_mix_with_lanes_and_tasks_that_run_alone() {
    let env = Env::new("b_mix").await;
    env.node_sql(
        "create table items (id int primary key, name text);
         create table log (seq int);",
    )
    .await;
    let node = start_node(NodeConfig {
        copy_tables: vec!["items".into()],
        ..env.config()
    });
    let mut tasks = Vec::new();
    // Lane L: insert, update, delete, insert again: only in order does id 1 end as 'd'.
    for (i, data) in [
        "action=ins&id=1&name=a",
        "action=upd&id=1&name=b",
        "action=del&id=1",
        "action=ins&id=1&name=d",
    ]
    .iter()
    .enumerate()
    {
        tasks.push(copy(1 + i as i64, data.to_string(), Some("L")));
    }
    for i in 5..=40 {
        tasks.push(copy(i, format!("action=ins&id={i}&name=n{i}"), None));
    }
    tasks.push(Pull {
        options: Some("tx=0"),
        ..sql_task(41, "insert into log values (41)")
    });
    tasks.push(sql_task(
        42,
        "insert into log values (42); select count(*) as n from log",
    ));
    tasks.push(Pull {
        options: Some("timeout_ms=5000"),
        ..copy(43, "action=ins&id=43&name=n43".into(), None)
    });
    put(&env, &tasks).await;
    env.wait_shipped(&(1..=43).collect::<Vec<_>>()).await;
    for (id, state, attempts) in states(&env).await {
        assert_eq!((state.as_str(), attempts), ("done", 1), "task {id}");
    }
    let name: String = env
        .node
        .connect()
        .await
        .query_one("select name from items where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "d", "the lane's copies ran in order");
    assert_eq!(env.node_count("select count(*) from items").await, 38);
    assert_eq!(env.node_count("select count(*) from log").await, 2);
    stop_node(node).await;
    env.stop_ticker().await;
}
