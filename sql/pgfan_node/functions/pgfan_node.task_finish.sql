-- pgfan_node.task_finish(task_id, run_key, state, error, result): a task connection
-- records how its task ended.
--
-- The second door of the task login (see task_begin). For a transactional task it runs in
-- the task's transaction, so the effect and the done+result row commit together; it first
-- checks that this is still the transaction task_begin ran in. If the task's SQL ended it
-- (COMMIT, ROLLBACK) and the statements after it ran on their own, it raises instead of
-- recording anything, and the daemon records the escape through its own login. Returns
-- whether the task moved (false: it was finished already, or the key is wrong).
create or replace function pgfan_node.task_finish(
    i_task_id bigint, i_run_key text, i_state text, i_error text, i_result jsonb)
returns boolean as $$
declare
    v_tx boolean;
    v_xid bigint;
begin
    select tx, run_xid into v_tx, v_xid
      from pgfan_node.task
     where task_id = i_task_id and run_key = i_run_key;
    if not found then
        return false;
    end if;
    if v_tx and (v_xid is null or v_xid is distinct from pg_catalog.txid_current_if_assigned()) then
        raise exception 'pgfan: task % ended the transaction it ran in', i_task_id
            using errcode = 'PF001';
    end if;
    return pgfan_node.finish_task(i_task_id, i_state, i_error, i_result);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

revoke all on function pgfan_node.task_finish(bigint, text, text, text, jsonb) from public;
grant execute on function pgfan_node.task_finish(bigint, text, text, text, jsonb) to public;
