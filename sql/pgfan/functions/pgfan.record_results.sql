-- pgfan.record_results_finish(task_ids, nodes, results): pgfan.record_result for a whole
-- chunk of result events in a few statements, finishing on the way the jobs whose one task
-- this chunk completes. Returns a row per input, in input order: the task's job id when
-- that result was recorded (NULL otherwise), and whether the job was finished here.
--
-- The same rules as record_result, applied to sets: job rows locked first, then task rows
-- (both in id order, as cancel and expire_jobs lock them); unknown tasks, results from
-- another node and invalid states become dead letters; only a task's first result counts;
-- a failed task is also listed as a dead letter. A chunk that names a task twice goes
-- through record_result one by one, where the second result sees what the first did.
-- The reducer records each chunk with this: one call instead of one per result, which
-- cost more than all the rest of the reducer's work (pg_stat_statements, delivery bench).
--
-- A job of a single task without a reduce, the most common job of all (a raw event with
-- one target), is done when that task is: it is finished here exactly as complete_jobs'
-- fast path would finish it (result_in_task, waiters notified), so that the reducer does
-- not offer it to complete_jobs, which would lock it again and look up its tasks again
-- (about a third of the reducer's statement time on the delivery benchmark). Every other
-- recorded job is left for complete_jobs.
-- SECURITY DEFINER: the reducer's door (pgfan_reducer has no right on pgfan's tables).
create or replace function pgfan.record_results_finish(
    i_task_ids bigint[], i_nodes text[], i_results jsonb[])
returns table (recorded_job bigint, finished boolean) as $$
declare
    v_jobs bigint[];
    v_finished boolean[];
    v_single bigint[];
begin
    if (select count(distinct x) from unnest(i_task_ids) x) <> cardinality(i_task_ids) then
        return query
        select pgfan.record_result(u.id, u.node, u.res), false
          from unnest(i_task_ids, i_nodes, i_results) with ordinality u(id, node, res, n)
         order by u.n;
        return;
    end if;
    perform 1 from pgfan.job
     where job_id in (select t.job_id from pgfan.task t where t.task_id = any(i_task_ids))
     order by job_id
       for update;
    perform 1 from pgfan.task where task_id = any(i_task_ids) order by task_id for update;

    insert into pgfan.dead_letter (source, job_id, task_id, queue_name, ev_type, ev_data, ev_target, error)
    select 'reducer', t.job_id, u.id, 'pgfan_results', 'result', u.res::text, u.node,
           case when t.task_id is null then 'pgfan: result for unknown task ' || u.id
                when t.node_name is distinct from u.node
                    then format('pgfan: result for task %s of node %s came from node %s',
                                u.id, t.node_name, u.node)
                else format('pgfan: result with invalid state %L', u.res ->> 'state') end
      from unnest(i_task_ids, i_nodes, i_results) with ordinality u(id, node, res, n)
      left join pgfan.task t on t.task_id = u.id
     where t.task_id is null or t.node_name is distinct from u.node
        or coalesce(u.res ->> 'state', '') not in ('done', 'failed', 'cancelled')
     order by u.n;

    -- A task the master cancelled may still have run: the node's report of what really
    -- happened replaces the cancel; a second result of a finished task is a duplicate.
    with u as (
        select u.id, u.node, u.res, u.n, u.res ->> 'state' as st, u.res ->> 'error' as err
          from unnest(i_task_ids, i_nodes, i_results) with ordinality u(id, node, res, n)),
    upd as (
        update pgfan.task t
           set state = u.st,
               error = u.err,
               finished_at = now(),
               result_columns = array(select jsonb_array_elements_text(u.res -> 'columns')),
               result_types = array(select jsonb_array_elements_text(u.res -> 'types')),
               result_rows = coalesce(jsonb_array_length(u.res -> 'rows'), 0)
          from u
         where t.task_id = u.id and t.node_name = u.node
           and u.st in ('done', 'failed', 'cancelled')
           and t.state not in ('done', 'failed')
           and not (t.state = 'cancelled' and u.st = 'cancelled')
        returning t.task_id, t.job_id, u.res, u.st, u.err, u.node, u.n),
    task_rows as (
        insert into pgfan.task_row (task_id, row_no, vals)
        select upd.task_id, r.ord, array(select jsonb_array_elements_text(r.vals))
          from upd, jsonb_array_elements(coalesce(upd.res -> 'rows', '[]')) with ordinality r(vals, ord)),
    failures as (
        insert into pgfan.dead_letter (source, job_id, task_id, ev_target, error)
        select 'node', upd.job_id, upd.task_id, upd.node, coalesce(upd.err, 'failed')
          from upd where upd.st = 'failed' order by upd.n),
    -- complete_jobs' fast path for a job of one task (its conditions, its writes).
    single as (
        update pgfan.job j
           set state = 'done', error = null, finished_at = now(), result_in_task = true
          from upd
         where j.job_id = upd.job_id and upd.st = 'done' and j.state = 'running'
           and (j.policy in ('all', 'failfast') or j.policy ~ '^k:[0-9]+$')
           and lower(btrim(coalesce(j.reduce, 'concat'))) in ('concat', '')
           -- Types that concat_kinds names as they are (a copy's bigint count, most
           -- statements' columns) pass without a call of it per result (5 us each,
           -- delivery benchmark); any other name (an alias, a typmod) goes through it.
           and (array(select jsonb_array_elements_text(upd.res -> 'types'))
                    <@ array['smallint', 'integer', 'bigint', 'numeric', 'text',
                             'character varying', 'boolean']
                or array_position(pgfan.concat_kinds(
                       array(select jsonb_array_elements_text(upd.res -> 'types'))), null) is null)
           -- Its only task: the count routing wrote (retry_failed replaces a task, it
           -- does not add one), instead of a look at the job's tasks per result.
           and j.n_tasks = 1
        returning j.job_id)
    select array_agg(u.job_id order by x.n),
           array_agg(coalesce(u.job_id in (select s.job_id from single s), false) order by x.n),
           (select array_agg(s.job_id order by s.job_id) from single s)
      into v_jobs, v_finished, v_single
      from generate_series(1, cardinality(i_task_ids)) x(n)
      left join upd u on u.n = x.n;
    -- What complete_jobs' fast path does besides: no stored rows, waiters woken.
    if v_single is not null then
        delete from pgfan.job_result_row r where r.job_id = any(v_single);
        perform pg_notify('pgfan_job', x::text) from unnest(v_single) x order by x;
    end if;
    return query select u.job, u.fin from unnest(v_jobs, v_finished) with ordinality u(job, fin, n)
                  order by u.n;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

-- pgfan.record_results(task_ids, nodes, results): record_results_finish's job ids alone, in
-- input order, as reducers of the previous version read them (a job finished on the way is
-- then offered to complete_jobs, which leaves a finished job alone).
create or replace function pgfan.record_results(
    i_task_ids bigint[], i_nodes text[], i_results jsonb[])
returns bigint[] as $$
    select coalesce(array_agg(r.recorded_job), '{}')
      from pgfan.record_results_finish(i_task_ids, i_nodes, i_results) r;
$$ language sql security definer
set search_path = pg_catalog, pg_temp;
