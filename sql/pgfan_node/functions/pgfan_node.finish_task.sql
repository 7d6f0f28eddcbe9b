-- pgfan_node.finish_task(task_id, state, error, result): a task ends done, failed or cancelled.
--
-- Only an unfinished task moves (claimed or running), so a late duplicate cannot overwrite
-- a recorded outcome. Without i_result the result is the empty one of that state. Returns
-- whether the task moved. For a transactional task it runs in the task's own transaction,
-- so the effect and the done+result row commit together. PL/pgSQL rather than SQL: a SQL
-- function with a SET clause is planned again at every call, which cost more than the
-- update itself.
create or replace function pgfan_node.finish_task(
    i_task_id bigint, i_state text, i_error text, i_result jsonb default null)
returns boolean as $$
begin
    update pgfan_node.task
       set state = i_state,
           error = i_error,
           result = coalesce(i_result, pgfan_node.empty_result(i_state, i_error)),
           finished_at = now()
     where task_id = i_task_id and state in ('claimed', 'running');
    return found;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;

-- the daemon's login only: task logins finish their task through task_finish
revoke all on function pgfan_node.finish_task(bigint, text, text, jsonb) from public;
