-- pgfan.tasks_claimed(node, task_ids): the node daemon took these tasks into its database.
--
-- Called in the master transaction that finishes the node's pull batch, so the master's
-- view moves to "claimed" exactly when the batch is acknowledged. Only the node's own,
-- still queued tasks move. Returns how many did.
create or replace function pgfan.tasks_claimed(i_node text, i_task_ids bigint[])
returns integer as $$
    with c as (
        update pgfan.task set state = 'claimed', claimed_at = now()
         where task_id = any(i_task_ids) and node_name = i_node and state = 'queued'
        returning 1)
    select count(*)::integer from c;
$$ language sql
set search_path = pg_catalog, pg_temp;
