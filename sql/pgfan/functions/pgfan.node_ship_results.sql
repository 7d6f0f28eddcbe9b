-- pgfan.node_ship_results(node, task_ids, job_ids, results): a node's finished tasks go to
-- the reducer as events of pgfan_results (docs/pipeline.md, "Result events"), in order.
--
-- A node door: only a caller that may act as the node (pgfan.node_caller), and only for
-- the node's own tasks, so one node cannot answer for another's. The node name in the
-- events (ev_extra3) is the checked one, not the caller's word. A task that no longer
-- exists (retry_failed replaced it) still goes through: the reducer records it as a dead
-- letter, as before. Returns the number of events.
create or replace function pgfan.node_ship_results(
    i_node text, i_task_ids bigint[], i_job_ids text[], i_results text[])
returns integer as $$
begin
    perform pgfan.node_caller(i_node);
    perform pgfan.check_node_tasks(i_node, i_task_ids);
    perform pgfan.enqueue('pgfan_results', 'result', u.result, u.task_id::text, u.job_id, i_node, null)
       from unnest(i_results, i_task_ids, i_job_ids) with ordinality as u(result, task_id, job_id, n)
      order by u.n;
    return coalesce(cardinality(i_task_ids), 0);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
