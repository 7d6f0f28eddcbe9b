-- pgfan.cancelled_tasks(node, task_ids): which of the node's tasks were cancelled on the
-- master (pgfan.cancel, a fail-fast job, an expired deadline), so the node stops them.
create or replace function pgfan.cancelled_tasks(i_node text, i_task_ids bigint[])
returns setof bigint as $$
    select task_id from pgfan.task
     where task_id = any(i_task_ids) and node_name = i_node and state = 'cancelled';
$$ language sql stable
set search_path = pg_catalog, pg_temp;
