-- pgfan.cancelled_tasks(node, task_ids): which of the node's tasks were cancelled on the
-- master (pgfan.cancel, a fail-fast job, an expired deadline), so the node stops them.
-- A node door: only a caller that may act as the node (pgfan.node_caller).
create or replace function pgfan.cancelled_tasks(i_node text, i_task_ids bigint[])
returns setof bigint as $$
begin
    perform pgfan.node_caller(i_node);
    return query
        select task_id from pgfan.task
         where task_id = any(i_task_ids) and node_name = i_node and state = 'cancelled';
end;
$$ language plpgsql stable security definer
set search_path = pg_catalog, pg_temp;
