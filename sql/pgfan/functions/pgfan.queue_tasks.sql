-- pgfan.queue_tasks(nodes, task_ids, job_ids, kinds, payloads, lanes, options): the pull
-- events of a set of new tasks, several tasks per event (docs/pipeline.md, "Pull events",
-- type `tasks`). Returns the number of events.
--
-- One event per node and chunk instead of one per task: a claim, a queue row and an
-- insert_event call are then paid per routed batch, not per task (the per-task
-- pgfan.enqueue was most of the relay's time in the delivery benchmark). A chunk closes
-- once its payloads reach 4 MiB, so one event stays far below what a text value can hold
-- whatever the batch size; the tasks of a node keep their id order inside and across its
-- events. The arrays hold one element per task; the caller has made the task rows.
create or replace function pgfan.queue_tasks(
    i_nodes text[], i_task_ids bigint[], i_job_ids bigint[], i_kinds text[],
    i_payloads text[], i_lanes text[], i_options text[])
returns integer as $$
declare
    v_n integer;
begin
    select count(pgfan.enqueue(c.queue_name, 'tasks', c.data, null, null, null, null))
      into v_n
      from (select nd.queue_name, x.chunk,
                   json_agg(json_build_object('task', x.task, 'job', x.job, 'kind', x.kind,
                                              'data', x.payload, 'lane', x.lane,
                                              'options', nullif(x.options, ''))
                            order by x.task)::text as data
              from (select u.*,
                           coalesce(sum(octet_length(u.payload)) over w, 0) / 4194304 as chunk
                      from unnest(i_nodes, i_task_ids, i_job_ids, i_kinds, i_payloads, i_lanes,
                                  i_options) u(node, task, job, kind, payload, lane, options)
                    window w as (partition by u.node order by u.task
                                 rows between unbounded preceding and 1 preceding)) x
              join pgfan.node nd on nd.node_name = x.node
             group by nd.queue_name, x.chunk
             order by nd.queue_name, x.chunk) c;
    return v_n;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
