-- pgfan.check_node_tasks(node, task_ids): raises unless every given task that exists
-- belongs to the node.
--
-- The check of the node doors that ship results (node_ship_batch, node_ship_results), so
-- that one node cannot answer for another's tasks. A task that no longer exists
-- (retry_failed replaced it) passes: the reducer dead-letters its result. Looked up task
-- by task through the primary key: with "= any(...) limit 1" the planner expected an
-- early match among the other nodes' tasks and scanned the whole table (8 ms a call with
-- 10k tasks in the delivery benchmark). Runs with the rights of the door that calls it.
create or replace function pgfan.check_node_tasks(i_node text, i_task_ids bigint[])
returns void as $$
declare
    v_other bigint;
begin
    select min(t.task_id) into v_other
      from unnest(i_task_ids) u(task_id)
      join pgfan.task t on t.task_id = u.task_id
     where t.node_name <> i_node;
    if v_other is not null then
        raise exception 'pgfan: task % does not belong to node %', v_other, i_node
            using errcode = 'insufficient_privilege';
    end if;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;

revoke all on function pgfan.check_node_tasks(text, bigint[]) from public;
