-- pgfan.retry_failed(job_id): run the failed tasks of a failed job again, and only those.
--
-- Each failed task is replaced by a new task (new id, same node, payload and lane) in its
-- node's pull queue; the failed rows are removed (their errors stay in dead_letter, marked
-- replayed: the retry is their replay, and `pgfan dead-letter list` no longer shows them
-- as waiting) and the job runs again, keeping its done tasks' results. Returns the number
-- of tasks requeued.
create or replace function pgfan.retry_failed(i_job_id bigint)
returns integer as $$
declare
    v_task record;
    v_new bigint;
    v_n integer := 0;
begin
    perform 1 from pgfan.job where job_id = i_job_id and state = 'failed' for update;
    if not found then
        raise exception 'pgfan.retry_failed: job % is not a failed job', i_job_id;
    end if;
    for v_task in
        select t.*, n.queue_name from pgfan.task t join pgfan.node n using (node_name)
         where t.job_id = i_job_id and t.state in ('failed', 'cancelled')
         order by t.task_id
    loop
        insert into pgfan.task (job_id, node_name, part_no, kind, payload, lane, options)
        values (i_job_id, v_task.node_name, v_task.part_no, v_task.kind, v_task.payload,
                v_task.lane, v_task.options)
        returning task_id into v_new;
        perform pgfan.enqueue(v_task.queue_name, v_task.kind, v_task.payload, v_new::text,
                                 i_job_id::text, v_task.lane, v_task.options);
        delete from pgfan.task where task_id = v_task.task_id;
        update pgfan.dead_letter set replayed_at = now()
         where task_id = v_task.task_id and replayed_at is null;
        v_n := v_n + 1;
    end loop;
    update pgfan.job set state = 'running', error = null, finished_at = null
     where job_id = i_job_id;
    -- Running again, it can expire again (expire_jobs dropped it from the list).
    insert into pgfan.job_deadline (job_id, deadline)
    select job_id, deadline from pgfan.job where job_id = i_job_id and deadline is not null
    on conflict (job_id) do nothing;
    return v_n;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
