-- pgfan.node_ship_batch(node, task_ids, job_ids, results): a node's finished tasks go to
-- the reducer as ONE event of pgfan_results carrying all of them (docs/pipeline.md,
-- "Result events", type `results`). Returns the number of results.
--
-- node_ship_results' door with one event per ship round instead of one per task: the
-- queue row, the insert_event call and the reducer's event are paid per round. The same
-- checks: only a caller that may act as the node (pgfan.node_caller), only the node's own
-- tasks, and the node name in the event (ev_extra3) is the checked one. A task that no
-- longer exists (retry_failed replaced it) still goes through: the reducer records it as
-- a dead letter. The results are the node's JSON objects, put into the event's array as
-- they come (the node writes them from jsonb, so they are valid JSON; a node that sends
-- anything else gets its whole event dead-lettered by the reducer, nobody else's).
-- node_ship_results stays for node daemons of the previous version.
create or replace function pgfan.node_ship_batch(
    i_node text, i_task_ids bigint[], i_job_ids text[], i_results text[])
returns integer as $$
declare
    v_data text;
begin
    perform pgfan.node_caller(i_node);
    if coalesce(cardinality(i_task_ids), 0) = 0 then
        return 0;
    end if;
    perform pgfan.check_node_tasks(i_node, i_task_ids);
    select '[' || string_agg(format('{"task":%s,"job":%s,"result":%s}', u.task_id,
                                    coalesce(to_json(u.job_id)::text, 'null'),
                                    coalesce(u.result, 'null')), ',' order by u.n) || ']'
      into v_data
      from unnest(i_task_ids, i_job_ids, i_results) with ordinality u(task_id, job_id, result, n);
    perform pgfan.enqueue('pgfan_results', 'results', v_data, null, null, i_node, null);
    return cardinality(i_task_ids);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
