//! Running a planned task's statement and reading its result.
//!
//! The result is what a task ships: its rows as text, typed by the plan's shape.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::plan::Plan;
use super::result::TaskResult;

/// Name of the cursor through which `call` results are read as text.
const CURSOR: &str = "pgfan_task_rows";

/// Runs the planned work; inside a transaction when `c` has one open.
pub async fn execute(c: &Client, plan: &Plan) -> Result<TaskResult, tokio_postgres::Error> {
    match plan {
        Plan::Raw { sql, types } => {
            let msgs = c.simple_query(sql).await?;
            Ok(TaskResult::from_messages(&msgs, types.as_ref()))
        }
        Plan::Query { sql, params, shape } => {
            // A cursor gets the values bound as parameters and still returns them as text.
            c.execute(
                &format!("declare {CURSOR} no scroll cursor for {sql}"),
                &refs(params),
            )
            .await?;
            let msgs = c.simple_query(&format!("fetch all from {CURSOR}")).await?;
            c.batch_execute(&format!("close {CURSOR}")).await?;
            Ok(TaskResult::from_messages(&msgs, Some(shape)))
        }
        Plan::Modify { sql, params } => {
            let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                .iter()
                .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT))
                .collect();
            Ok(TaskResult::count(c.execute_typed(sql, &typed).await?))
        }
    }
}

fn refs(params: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

