-- pgfan.tasks_claimed(node, task_ids): the node daemon took these tasks into its database.
--
-- Called in the master transaction that finishes the node's pull batch, so the master's
-- view moves to "claimed" exactly when the batch is acknowledged. Only the node's own,
-- still queued tasks move. Returns how many did. A node door: only a caller that may act
-- as the node (pgfan.node_caller).
create or replace function pgfan.tasks_claimed(i_node text, i_task_ids bigint[])
returns integer as $$
declare
    v_n integer;
begin
    perform pgfan.node_caller(i_node);
    update pgfan.task set state = 'claimed', claimed_at = now()
     where task_id = any(i_task_ids) and node_name = i_node and state = 'queued';
    get diagnostics v_n = row_count;
    return v_n;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
