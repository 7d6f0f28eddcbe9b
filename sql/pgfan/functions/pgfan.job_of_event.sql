-- pgfan.job_of_event(ev_id [, queue]): the job the relay made of a raw push event.
--
-- A raw `pgq.insert_event('push_queue', ...)` returns the event's id; its job exists once
-- the relay has routed it (usually within milliseconds), and this finds it: NULL until
-- then, or when the event named no job-making target. `queue` is the push queue the event
-- went to: 'push_queue' on the master, '<producer>/<queue>' for a producer database the
-- relay reads (its jobs' source). For pgfan_producer too: a job id says nothing by itself;
-- reading the job's result keeps its own rights.
create or replace function pgfan.job_of_event(i_ev_id bigint, i_queue text default 'push_queue')
returns bigint as $$
    select job_id from pgfan.job where source_queue = i_queue and source_ev_id = i_ev_id;
$$ language sql stable security definer
set search_path = pg_catalog, pg_temp;
