-- pgfan.record_result(task_id, node, result): store one task's result shipped by a node.
--
-- Results can arrive more than once (a node that crashed between shipping and marking
-- the task shipped sends it again), so only the first result of a task counts: the
-- task row is locked and a task already done or failed is left alone. A result
-- for an unknown task, or from a node the task does not belong to, is a dead letter.
-- Failed tasks are also listed as dead letters, with their error, for `retry_failed`.
-- Returns the task's job id when the result was recorded, NULL otherwise.
create or replace function pgfan.record_result(i_task_id bigint, i_node text, i_result jsonb)
returns bigint as $$
declare
    v_task record;
    v_state text := i_result ->> 'state';
    v_error text := i_result ->> 'error';
begin
    -- The job's row first: pgfan.cancel and pgfan.expire_jobs lock a job and then its tasks,
    -- and the reducer locks the job again in complete_job; taking the task first deadlocked
    -- with a cancel of its job.
    perform 1 from pgfan.job
     where job_id = (select t.job_id from pgfan.task t where t.task_id = i_task_id)
       for update;
    select task_id, job_id, node_name, state into v_task
      from pgfan.task where task_id = i_task_id for update;
    if not found or v_task.node_name is distinct from i_node
       or v_state is null or v_state not in ('done', 'failed', 'cancelled') then
        insert into pgfan.dead_letter (source, job_id, task_id, queue_name, ev_type, ev_data, ev_target, error)
        values ('reducer', v_task.job_id, i_task_id, 'pgfan_results', 'result', i_result::text, i_node,
                case when v_task.task_id is null then 'pgfan: result for unknown task ' || i_task_id
                     when v_task.node_name is distinct from i_node
                         then format('pgfan: result for task %s of node %s came from node %s',
                                     i_task_id, v_task.node_name, i_node)
                     else format('pgfan: result with invalid state %L', v_state) end);
        return null;
    end if;
    -- A task the master cancelled may still have run: the node's report of what really
    -- happened replaces the cancel; any other second result is a re-shipped duplicate.
    if v_task.state in ('done', 'failed')
       or (v_task.state = 'cancelled' and v_state = 'cancelled') then
        return null;
    end if;
    update pgfan.task
       set state = v_state,
           error = v_error,
           finished_at = now(),
           result_columns = array(select jsonb_array_elements_text(i_result -> 'columns')),
           result_types = array(select jsonb_array_elements_text(i_result -> 'types')),
           result_rows = coalesce(jsonb_array_length(i_result -> 'rows'), 0)
     where task_id = i_task_id;
    insert into pgfan.task_row (task_id, row_no, vals)
    select i_task_id, r.ord, array(select jsonb_array_elements_text(r.vals))
      from jsonb_array_elements(coalesce(i_result -> 'rows', '[]')) with ordinality r(vals, ord);
    if v_state = 'failed' then
        insert into pgfan.dead_letter (source, job_id, task_id, ev_target, error)
        values ('node', v_task.job_id, i_task_id, i_node, coalesce(v_error, 'failed'));
    end if;
    return v_task.job_id;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
