-- pgfan_node.task_finish_many(task_ids, run_keys, states, errors, results): a task
-- connection records a batch of transactional tasks in the transaction that ran them.
--
-- The set form of task_finish: each task must have been taken in this very transaction
-- (task_begin_many), else nothing is recorded and it raises (PF001), so a batch whose
-- transaction was ended by task SQL cannot claim the effects it lost. Returns how many
-- tasks moved.
--
-- State 'claimed' gives a task back unrun: the batch rolled its statement back to its
-- savepoint (or never sent it) because it must run again alone, e.g. a deadlock that only
-- the batch's longer-held locks caused, or a cancel meant for a neighbour. Its taking is
-- undone, so the attempt is not counted.
create or replace function pgfan_node.task_finish_many(
    i_task_ids bigint[], i_run_keys text[], i_states text[], i_errors text[], i_results text[])
returns integer as $$
declare
    v_moved integer;
begin
    update pgfan_node.task t
       set state = r.state,
           error = r.error,
           result = r.result::jsonb,
           finished_at = case when r.state = 'claimed' then null else now() end,
           started_at = case when r.state = 'claimed' then null else t.started_at end,
           attempts = t.attempts - (r.state = 'claimed')::integer,
           run_xid = case when r.state = 'claimed' then null else t.run_xid end
      from unnest(i_task_ids, i_run_keys, i_states, i_errors, i_results)
           r(task_id, run_key, state, error, result)
     where t.task_id = r.task_id and t.run_key = r.run_key and t.tx
       and t.state = 'claimed'
       and t.run_xid = pg_catalog.txid_current_if_assigned()
       and r.state in ('done', 'failed', 'cancelled', 'claimed');
    get diagnostics v_moved = row_count;
    if v_moved <> coalesce(array_length(i_task_ids, 1), 0) then
        raise exception 'pgfan: % of % tasks were not running in this transaction',
            coalesce(array_length(i_task_ids, 1), 0) - v_moved,
            coalesce(array_length(i_task_ids, 1), 0)
            using errcode = 'PF001';
    end if;
    return v_moved;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

revoke all on function pgfan_node.task_finish_many(bigint[], text[], text[], text[], text[]) from public;
grant execute on function pgfan_node.task_finish_many(bigint[], text[], text[], text[], text[]) to public;
