-- pgfan_node.task_begin(task_id, run_key): a task connection starts its task.
--
-- The door through which a task connection, logged in as the node's task login (which has
-- no rights on pgfan_node's tables), takes the task it was handed: only with the task's
-- run key, which the daemon read as the owner. A transactional task is taken while it is
-- still claimed, inside the transaction that will run it; the row lock makes a second
-- runner wait for the first and then find it finished. Its transaction id is kept so that
-- task_finish can tell whether the task's SQL ended that transaction. A task outside a
-- transaction block (tx = false) is marked running and committed at once; one left
-- running by a crash is taken again (at-least-once). Returns whether the task was taken.
create or replace function pgfan_node.task_begin(i_task_id bigint, i_run_key text)
returns boolean as $$
begin
    update pgfan_node.task
       set started_at = now(),
           attempts = attempts + 1,
           state = case when tx then state else 'running' end,
           run_xid = case when tx then pg_catalog.txid_current() end
     where task_id = i_task_id and run_key = i_run_key
       and (state = 'claimed' or (state = 'running' and not tx));
    return found;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

revoke all on function pgfan_node.task_begin(bigint, text) from public;
grant execute on function pgfan_node.task_begin(bigint, text) to public;
