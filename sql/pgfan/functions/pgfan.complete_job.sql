-- pgfan.complete_job(job_id): finish the job if its results allow it, by its policy.
--
--   all       done when every task is done; failed once every task has finished and
--             one of them failed (the others run to the end, so retry_failed re-runs
--             only what failed)
--   failfast  the first failure ends the job and cancels its open tasks
--   k:<n>     done when n tasks are done (the rest are cancelled); failed once n can no
--             longer be reached
-- A done job is reduced (pgfan.reduce_job); a failing reduce fails the job with its
-- error and leaves a dead letter. Returns the new state, or NULL while the job goes on.
-- Not pinned to a search_path: the reduce SQL runs with the caller's (see reduce_job).
create or replace function pgfan.complete_job(i_job_id bigint)
returns text as $$
declare
    v_job record;
    v_total integer;
    v_done integer;
    v_failed integer;
    v_lost integer;
    v_need integer;
    v_errors text;
begin
    select job_id, state, policy into v_job from pgfan.job where job_id = i_job_id for update;
    if not found or v_job.state <> 'running' then
        return null;
    end if;
    select count(*), count(*) filter (where state = 'done'),
           count(*) filter (where state = 'failed'),
           count(*) filter (where state in ('failed', 'cancelled')),
           string_agg(format('%s: %s', node_name, error), '; ' order by task_id)
               filter (where state = 'failed')
      into v_total, v_done, v_failed, v_lost, v_errors
      from pgfan.task where job_id = i_job_id;
    v_need := case when v_job.policy like 'k:%' then least(substr(v_job.policy, 3)::integer, v_total)
                   else v_total end;
    if v_done >= v_need then
        begin
            perform pgfan.reduce_job(i_job_id);
        exception when others then
            insert into pgfan.dead_letter (source, job_id, error)
            values ('reducer', i_job_id, 'reduce failed: ' || sqlerrm);
            return pgfan.finish_job(i_job_id, 'failed', 'reduce failed: ' || sqlerrm);
        end;
        return pgfan.finish_job(i_job_id, 'done', null);
    elsif (v_job.policy = 'failfast' and v_failed > 0)
       or (v_total - v_lost < v_need and (v_job.policy <> 'all' or v_done + v_lost = v_total)) then
        return pgfan.finish_job(i_job_id, 'failed',
            format('%s of %s tasks failed: %s', v_failed, v_total, coalesce(v_errors, 'cancelled')));
    end if;
    return null;
end;
$$ language plpgsql;
