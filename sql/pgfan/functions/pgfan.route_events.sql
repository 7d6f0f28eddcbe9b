-- pgfan.route_events(source, ev_ids, jobs, kinds, targets, params, reduces, policies,
--                    timeouts, payloads, lanes, parallels, options): pgfan.route_event for
-- every event of a push batch, in a few statements; returns the job ids in input order.
--
-- The arrays hold one element per event, as route_event takes them one by one, except
-- that each event's payloads come as a jsonb array of strings. Raw events get their job
-- (found again on redelivery, by queue and event id); every job is locked in id order and
-- must be submitted (a cancelled one stays without tasks); its tasks are made per target
-- node and payload in the order route_job makes them, then queued in task id order, and
-- the jobs marked running. Anything unusual raises and the relay routes the batch event
-- by event instead, where each problem is told apart: a job in another state, nothing to
-- run, a target that does not resolve, and every "any" target (its choice depends on the
-- tasks routed just before it, which a set statement cannot see).
-- One call per batch instead of one per event, each making several statements: routing
-- was the largest cost on the master (pg_stat_statements, delivery bench).
-- SECURITY DEFINER: the relay's door (pgfan_relay needs no right on pgfan's tables or
-- queues); raw events' reduce SQL is checked first (pgfan.check_raw_reduce).
create or replace function pgfan.route_events(
    i_source text, i_ev_ids bigint[], i_jobs bigint[], i_kinds text[], i_targets text[],
    i_params jsonb[], i_reduces text[], i_policies text[], i_timeouts interval[],
    i_payloads jsonb[], i_lanes text[], i_parallels integer[], i_options text[])
returns bigint[] as $$
declare
    v_jobs bigint[];
    v_bad text;
begin
    if 'any' = any(i_targets) then
        raise exception 'pgfan: target any is routed event by event';
    end if;
    perform pgfan.check_raw_reduce(i_source, coalesce(array_agg(u.ev_id), '{}'),
                                   coalesce(array_agg(u.reduce), '{}'))
       from unnest(i_ev_ids, i_jobs, i_reduces) u(ev_id, job, reduce)
      where u.job is null;
    with raw as (
        insert into pgfan.job (kind, target, params, reduce, policy, deadline, submitted_by,
                               source_queue, source_ev_id)
        select u.kind, u.target, u.params, u.reduce, coalesce(u.policy, 'all'),
               now() + u.timeout, current_user, i_source, u.ev_id
          from unnest(i_ev_ids, i_jobs, i_kinds, i_targets, i_params, i_reduces, i_policies,
                      i_timeouts) with ordinality
               u(ev_id, job, kind, target, params, reduce, policy, timeout, n)
         where u.job is null
         order by u.n
        on conflict (source_queue, source_ev_id) do update set kind = excluded.kind
        returning job_id, source_ev_id)
    select array_agg(coalesce(u.job, raw.job_id) order by u.n)
      into v_jobs
      from unnest(i_ev_ids, i_jobs) with ordinality u(ev_id, job, n)
      left join raw on u.job is null and raw.source_ev_id = u.ev_id;

    perform 1 from pgfan.job where job_id = any(v_jobs) order by job_id for update;
    select format('job %s: %s', u.job, coalesce(j.state, 'unknown'))
      into v_bad
      from unnest(v_jobs) u(job) left join pgfan.job j on j.job_id = u.job
     where j.state is distinct from 'submitted' and j.state is distinct from 'cancelled'
        or u.job is null
     limit 1;
    if v_bad is not null then
        raise exception 'pgfan: % cannot be routed in a set', v_bad;
    end if;
    if exists (select 1 from unnest(i_payloads) p
                where p is null or jsonb_typeof(p) <> 'array' or jsonb_array_length(p) = 0) then
        raise exception 'pgfan: a job of the batch has nothing to run';
    end if;

    with ev as (
        select u.n, u.job, j.kind, j.target, u.payloads, u.lane, u.parallel,
               nullif(u.options, '') as options
          from unnest(v_jobs, i_payloads, i_lanes, i_parallels, i_options) with ordinality
               u(job, payloads, lane, parallel, options, n)
          join pgfan.job j on j.job_id = u.job
         where j.state = 'submitted'),
    made as (
        insert into pgfan.task (job_id, node_name, part_no, kind, payload, lane, options)
        select ev.job, r.node_name, p.ord - 1, ev.kind, p.payload,
               case
                   when ev.lane is not null then ev.lane
                   when ev.parallel is not null and jsonb_array_length(ev.payloads) > 1
                       then ev.job || ':' || ((p.ord - 1) % ev.parallel)
               end,
               ev.options
          from ev
          cross join lateral pgfan.resolve_target(ev.target) with ordinality r(node_name, ord)
          cross join lateral jsonb_array_elements_text(ev.payloads) with ordinality p(payload, ord)
         order by ev.n, r.ord, p.ord
        returning task_id, job_id, node_name, kind, payload, lane, options),
    queued as (
        select count(pgfan.enqueue(s.queue_name, s.kind, s.payload, s.task_id::text,
                                   s.job_id::text, s.lane, s.options)) as n
          from (select m.*, nd.queue_name from made m join pgfan.node nd using (node_name)
                 order by m.task_id) s)
    update pgfan.job j
       set state = 'running', n_tasks = c.n, routed_at = now()
      from (select m.job_id, count(*)::integer as n from made m group by m.job_id) c,
           queued
     where j.job_id = c.job_id and queued.n >= 0;
    return v_jobs;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
