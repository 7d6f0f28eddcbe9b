-- pgfan.expire_jobs(): fail the jobs whose deadline (submit time + timeout) has passed.
--
-- A job that can still be completed by its policy is completed; otherwise it fails with
-- how far it got ("timeout: 2 of 3 tasks done"), recorded as a dead letter too, and its
-- open tasks are cancelled. The reducer calls this periodically. Returns the number of
-- jobs ended.
-- The jobs come from pgfan.job_deadline. A listed job whose deadline has passed leaves the
-- list here, expired or not: one that finished in time, or was deleted, is just dropped
-- from it (pgfan.retry_failed lists a job again when it runs again).
-- SECURITY DEFINER: the reducer's door (pgfan_reducer has no right on pgfan's tables), so
-- reduce SQL runs with the owner's rights whichever login runs the reducer. Its search_path
-- is pinned to the owner's schema and public, with pg_temp last, so that the calling login
-- cannot put objects of its own (a temporary view, say) in the way of a name the reduce SQL
-- uses; the reduce SQL sees the same names as when the owner ran the reducer.
create or replace function pgfan.expire_jobs()
returns integer as $$
declare
    v_job record;
    v_n integer := 0;
    v_error text;
    v_due bigint[];
begin
    -- The ids first, and the jobs looked up by them: a join of the list with pgfan.job was
    -- planned as a scan of every job, run on every call although the list is mostly empty.
    select array_agg(d.job_id) into v_due
      from pgfan.job_deadline d where d.deadline < now();
    if v_due is null then
        return 0;
    end if;
    delete from pgfan.job_deadline d
     where d.job_id = any(v_due)
       and not exists (select 1 from pgfan.job j
                        where j.job_id = d.job_id and j.state in ('submitted', 'running'));
    for v_job in
        select j.job_id,
               (select count(*) from pgfan.task t where t.job_id = j.job_id and t.state = 'done') as done,
               (select count(*) from pgfan.task t where t.job_id = j.job_id) as total
          from pgfan.job j
         where j.job_id = any(v_due) and j.state in ('submitted', 'running')
         order by j.job_id
           for update of j skip locked
    loop
        delete from pgfan.job_deadline where job_deadline.job_id = v_job.job_id;
        if pgfan.complete_job(v_job.job_id) is null then
            v_error := format('timeout: %s of %s tasks done', v_job.done, v_job.total);
            insert into pgfan.dead_letter (source, job_id, error)
            values ('reducer', v_job.job_id, v_error);
            perform pgfan.finish_job(v_job.job_id, 'failed', v_error);
        end if;
        v_n := v_n + 1;
    end loop;
    return v_n;
end;
$$ language plpgsql security definer
set search_path = "$user", public, pg_temp;
