-- pgfan.route_job(job_id, payloads, lanes, options): make the job's tasks and queue them.
--
-- One task per (target node, payload); each goes into its node's pull queue as one event
-- (docs/pipeline.md, "Pull events"). The relay calls this in the same transaction as
-- finish_batch of the push batch, so a job is routed exactly once. A job cancelled
-- before it was routed gets no tasks. Returns the number of tasks.
create or replace function pgfan.route_job(
    i_job_id bigint, i_payloads text[], i_lanes text[], i_options text)
returns integer as $$
declare
    v_job record;
    v_node record;
    v_task bigint;
    v_n integer := 0;
begin
    select job_id, kind, target, state into v_job
      from pgfan.job where job_id = i_job_id for update;
    if not found then
        raise exception 'pgfan: unknown job %', i_job_id;
    elsif v_job.state = 'cancelled' then
        return 0;
    elsif v_job.state <> 'submitted' then
        raise exception 'pgfan: job % was already routed (state %)', i_job_id, v_job.state;
    end if;
    if coalesce(cardinality(i_payloads), 0) = 0 then
        raise exception 'pgfan: job % has nothing to run', i_job_id;
    end if;
    for v_node in
        select n.node_name, n.queue_name
          from pgfan.resolve_target(v_job.target) with ordinality r(node_name, ord)
          join pgfan.node n using (node_name)
         order by r.ord
    loop
        for i in 1 .. cardinality(i_payloads) loop
            insert into pgfan.task (job_id, node_name, part_no, kind, payload, lane, options)
            values (i_job_id, v_node.node_name, i - 1, v_job.kind, i_payloads[i], i_lanes[i],
                    nullif(i_options, ''))
            returning task_id into v_task;
            perform pgfan.enqueue(v_node.queue_name, v_job.kind, i_payloads[i],
                                     v_task::text, i_job_id::text, i_lanes[i],
                                     nullif(i_options, ''));
            v_n := v_n + 1;
        end loop;
    end loop;
    update pgfan.job set state = 'running', n_tasks = v_n, routed_at = now()
     where job_id = i_job_id;
    return v_n;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
