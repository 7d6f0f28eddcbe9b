-- pgfan.complete_jobs(job_ids): pgfan.complete_job for every job of a reducer batch;
-- returns the jobs that reached a final state, with that state.
--
-- The common case is done in a few statements for all of them: every task of the job is
-- done (whatever the policy, the job is then done), the tasks agree on their columns, and
-- the reduce is the plain concatenation of columns of the types reduce_job builds
-- statically (pgfan.concat_kinds, pgfan.concat_row). For those the result rows are
-- written, the job finished and waiters notified exactly as complete_job, reduce_job and
-- finish_job would (the same casts, so the same jsonb; no task is open, so there is
-- nothing to cancel), but for a job of one task, whose rows are not copied: it is marked
-- result_in_task, and the view pgfan.job_result shows its task's rows. Every other job goes
-- through complete_job, one at a time, in job id order after the fast ones. Jobs are
-- locked first, in id order, like complete_job locks each.
-- SECURITY DEFINER: the reducer's door (pgfan_reducer has no right on pgfan's tables), so
-- reduce SQL runs with the owner's rights whichever login runs the reducer. Its search_path
-- is pinned to the owner's schema and public, with pg_temp last, so that the calling login
-- cannot put objects of its own (a temporary view, say) in the way of a name the reduce SQL
-- uses; the reduce SQL sees the same names as when the owner ran the reducer.
create or replace function pgfan.complete_jobs(i_job_ids bigint[])
returns table (job_id bigint, state text) as $$
declare
    v_fast bigint[];
    v_single bigint[];
    v_multi bigint[];
    v_id bigint;
    v_state text;
begin
    perform 1 from pgfan.job j where j.job_id = any(i_job_ids) order by j.job_id for update;
    select coalesce(array_agg(j.job_id order by j.job_id), '{}'),
           coalesce(array_agg(j.job_id) filter (where s.n = 1), '{}'),
           coalesce(array_agg(j.job_id) filter (where s.n > 1), '{}')
      into v_fast, v_single, v_multi
      from pgfan.job j
      cross join lateral (
          select count(*) as n,
                 count(*) filter (where t.state = 'done') as done,
                 count(distinct (t.result_columns, t.result_types)) as shapes,
                 min(t.result_types) as types
            from pgfan.task t where t.job_id = j.job_id) s
     where j.job_id = any(i_job_ids) and j.state = 'running'
       and (j.policy in ('all', 'failfast') or j.policy ~ '^k:[0-9]+$')
       and lower(btrim(coalesce(j.reduce, 'concat'))) in ('concat', '')
       and s.n > 0 and s.done = s.n and s.shapes = 1
       and array_position(pgfan.concat_kinds(s.types), null) is null;

    -- A single-task job's result is its task's rows: it is marked (result_in_task) and read
    -- through the view pgfan.job_result, not copied. The others' rows are stored.
    delete from pgfan.job_result_row r where r.job_id = any(v_fast);
    if cardinality(v_multi) > 0 then
        insert into pgfan.job_result_row (job_id, row_no, row_data)
        select t.job_id, row_number() over (partition by t.job_id order by t.task_id, r.row_no),
               pgfan.concat_row(t.result_columns, pgfan.concat_kinds(t.result_types), r.vals)
          from pgfan.task_row r join pgfan.task t using (task_id)
         where t.job_id = any(v_multi) and t.state = 'done'
           and cardinality(t.result_columns) > 0;
    end if;
    update pgfan.job j set state = 'done', error = null, finished_at = now(),
                           result_in_task = j.job_id = any(v_single)
     where j.job_id = any(v_fast);
    perform pg_notify('pgfan_job', x::text) from unnest(v_fast) x order by x;
    return query select x, 'done'::text from unnest(v_fast) x order by x;

    for v_id in select x from unnest(i_job_ids) x where x <> all(v_fast) order by x loop
        v_state := pgfan.complete_job(v_id);
        if v_state is not null then
            job_id := v_id;
            state := v_state;
            return next;
        end if;
    end loop;
end;
$$ language plpgsql security definer
set search_path = "$user", public, pg_temp;
