-- pgfan.partials(job_id): the rows each node returned for a job, before any reduce.
--
-- One jsonb object per row: {"task", "node", "row"}, the row under its own task's columns
-- (numbers as numbers, as pgfan.result gives them), in task and row order. For a job in any
-- state: what a failed reduce could not combine, or the done tasks of a job still running,
-- stays readable. Same access as pgfan.result: the submitter, or the owner.
create or replace function pgfan.partials(i_job_id bigint)
returns setof jsonb as $$
declare
    v_by text;
begin
    select submitted_by into v_by from pgfan.job where job_id = i_job_id;
    if not found then
        raise exception 'pgfan.partials: unknown job %', i_job_id;
    elsif v_by is distinct from session_user::text and not pgfan.caller_is_owner() then
        raise exception 'pgfan.partials: job % was submitted by another role', i_job_id
            using errcode = 'insufficient_privilege';
    end if;
    return query
    select jsonb_build_object('task', t.task_id, 'node', t.node_name,
                              'row', pgfan.concat_row(t.result_columns,
                                                      pgfan.concat_kinds(t.result_types), r.vals))
      from pgfan.task t join pgfan.task_row r using (task_id)
     where t.job_id = i_job_id and t.state = 'done'
     order by t.task_id, r.row_no;
end;
$$ language plpgsql stable security definer
set search_path = pg_catalog, pg_temp;
