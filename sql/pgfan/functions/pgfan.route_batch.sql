-- pgfan.route_batch(source, ev_ids, jobs, kinds, targets, params, reduces, policies,
--                   timeouts, payloads, lanes, parallels, options): route a whole push
-- batch in a few statements, its pull events carrying many tasks each (docs/pipeline.md,
-- "Pull events", type `tasks`); returns the job ids in input order.
--
-- The arguments are route_events' (one element per event, each event's payloads as a
-- jsonb array of strings) and so are the tasks it makes, in the same order and with the
-- same lanes; what differs is what is written. A raw event's job row is written once,
-- already running with its task count, instead of inserted, then updated; the tasks of
-- the batch go out as one `tasks` event per node (and 4 MiB chunk) instead of one event
-- each (a chunk closes once its payloads reach 4 MiB, so an event stays far below what a
-- text value can hold; a node's tasks keep their id order inside and across its events).
-- A job made by pgfan.submit is locked and moved to running as before; a cancelled
-- one gets no tasks. Anything unusual raises, and the relay routes the batch event by
-- event instead, where each problem is told apart: a job in another state, nothing to
-- run, a target that resolves to no node, a raw event whose job exists already, and
-- every "any" target (its choice depends on the tasks routed just before it).
-- The pull events are written by one pgq._pgfan_insert_events call when the bundled core
-- is installed: at 1,000 nodes a pgfan.enqueue per event (a PL/pgSQL call, a queue
-- look-up and, past the 256 queues the generated insert_event covers, a dynamic INSERT
-- with its helpers) was nine tenths of this function's time (pg_stat_user_functions,
-- issue 14). With the PgQ extension, whose insert_event is C, they are written by a
-- pgfan.enqueue each.
-- route_events stays for relays of the previous version, whose nodes may not read
-- `tasks` events yet (docs/pipeline.md, "Upgrading").
-- SECURITY DEFINER: the relay's door (pgfan_relay needs no right on pgfan's tables or
-- queues); raw events' reduce SQL is checked first (pgfan.check_raw_reduce).
-- JIT off: the estimate of a set-returning resolve_target (1000 rows a call) times a
-- batch's events made the plan look costly enough to compile, 1.2-1.4 s of LLVM for a
-- statement that runs in 30 ms (perf on a master with 10k jobs); nothing here gains from it.
create or replace function pgfan.route_batch(
    i_source text, i_ev_ids bigint[], i_jobs bigint[], i_kinds text[], i_targets text[],
    i_params jsonb[], i_reduces text[], i_policies text[], i_timeouts interval[],
    i_payloads jsonb[], i_lanes text[], i_parallels integer[], i_options text[])
returns bigint[] as $$
declare
    v_bad text;
    t record;
    -- Whether the bundled core's bulk insert is there (not with the PgQ extension) and
    -- ours to call (it is owner-only; a core installed by another role keeps the old way).
    v_bulk boolean := coalesce(has_function_privilege(
        to_regprocedure('pgq._pgfan_insert_events(text[], text[], text[], text[], text[],'
                        ' text[], text[])'), 'execute'), false);
begin
    if 'any' = any(i_targets) then
        raise exception 'pgfan: target any is routed event by event';
    end if;
    if exists (select 1 from unnest(i_payloads) p
                where p is null or jsonb_typeof(p) <> 'array' or jsonb_array_length(p) = 0) then
        raise exception 'pgfan: a job of the batch has nothing to run';
    end if;
    perform pgfan.check_raw_reduce(i_source, coalesce(array_agg(u.ev_id), '{}'),
                                   coalesce(array_agg(u.reduce), '{}'))
       from unnest(i_ev_ids, i_jobs, i_reduces) u(ev_id, job, reduce)
      where u.job is null;
    -- Submitted jobs: locked in id order, as cancel locks them, and checked. Only when
    -- there are any: "= any(<all NULL>)" was planned as a scan of every job (18 ms a call
    -- with 10k jobs, delivery benchmark).
    if array_position(i_jobs, null) is null or exists (select 1 from unnest(i_jobs) x where x is not null) then
        perform 1 from pgfan.job
         where job_id in (select x from unnest(i_jobs) x where x is not null)
         order by job_id for update;
    end if;
    select format('job %s: %s', u.job, coalesce(j.state, 'unknown'))
      into v_bad
      from unnest(i_jobs) u(job) left join pgfan.job j on j.job_id = u.job
     where u.job is not null and j.state is distinct from 'submitted'
       and j.state is distinct from 'cancelled'
     limit 1;
    if v_bad is not null then
        raise exception 'pgfan: % cannot be routed in a set', v_bad;
    end if;

    -- Jobs and tasks in one statement: the raw jobs' rows need their task counts, and the
    -- tasks need the raw jobs' ids.
    with ev as (
        select u.n, u.ev_id, u.job, coalesce(j.kind, u.kind) as kind,
               case when u.job is null then u.target else j.target end as target,
               u.params, u.reduce, u.policy, u.timeout, u.payloads, u.lane, u.parallel,
               nullif(u.options, '') as options
          from unnest(i_ev_ids, i_jobs, i_kinds, i_targets, i_params, i_reduces, i_policies,
                      i_timeouts, i_payloads, i_lanes, i_parallels, i_options) with ordinality
               u(ev_id, job, kind, target, params, reduce, policy, timeout, payloads, lane,
                 parallel, options, n)
          -- Looked up job by job through the key ("offset 0" keeps the subquery from
          -- being flattened): as a join, the planner hashed every job of the table for a
          -- batch of raw events, which name none (a seq scan growing with pgfan.job).
          left join lateral (select j.kind, j.target, j.state from pgfan.job j
                              where u.job is not null and j.job_id = u.job offset 0) j on true
         where u.job is null or j.state = 'submitted'),
    -- A single node name, by far the common target, is looked up in one join instead of
    -- a pgfan.resolve_target call per event (about 10 µs each, most of the routing time
    -- after the inserts). Its rules are resolve_target's: the node exists and is neither
    -- disabled nor removed; a name that fails them gets no node here, and the batch raises below, to
    -- be routed event by event where resolve_target says what is wrong.
    dest as materialized (
        select ev.n, nd.node_name, 1::bigint as ord
          from ev join pgfan.node nd on nd.node_name = btrim(ev.target)
         where position(',' in ev.target) = 0 and ev.target not in ('all', 'any')
           and ev.target not like 'hash:%' and nd.state not in ('disabled', 'removed')
        union all
        select ev.n, r.node_name, r.ord
          from ev cross join lateral pgfan.resolve_target(ev.target) with ordinality r(node_name, ord)
         where ev.target is null or position(',' in ev.target) > 0
            or ev.target in ('all', 'any') or ev.target like 'hash:%'),
    counted as (
        select ev.*, coalesce(dc.nodes, 0) * jsonb_array_length(ev.payloads) as n_tasks
          from ev
          left join (select dest.n, count(*)::integer as nodes from dest group by dest.n) dc
                 on dc.n = ev.n),
    raw as (
        insert into pgfan.job (kind, target, params, reduce, policy, deadline, submitted_by,
                               source_queue, source_ev_id, state, n_tasks, routed_at)
        select c.kind, c.target, c.params, c.reduce, coalesce(c.policy, 'all'),
               now() + c.timeout, current_user, i_source, c.ev_id, 'running', c.n_tasks, now()
          from counted c
         where c.job is null and c.n_tasks > 0
         order by c.n
        on conflict (source_queue, source_ev_id) do nothing
        returning job_id, source_ev_id),
    routed as (
        select c.*, coalesce(c.job, raw.job_id) as job_id
          from counted c left join raw on c.job is null and raw.source_ev_id = c.ev_id
         where c.n_tasks > 0 and (c.job is not null or raw.job_id is not null)),
    made as (
        insert into pgfan.task (job_id, node_name, part_no, kind, payload, lane, options)
        select r.job_id, d.node_name, p.ord - 1, r.kind, p.payload,
               case
                   when r.lane is not null then r.lane
                   when r.parallel is not null and jsonb_array_length(r.payloads) > 1
                       then r.job_id || ':' || ((p.ord - 1) % r.parallel)
               end,
               r.options
          from routed r
          join dest d on d.n = r.n
          cross join lateral jsonb_array_elements_text(r.payloads) with ordinality p(payload, ord)
         order by r.n, d.ord, p.ord
        returning task_id, job_id, node_name, kind, payload, lane, options),
    submitted as (
        update pgfan.job j
           set state = 'running', n_tasks = r.n_tasks, routed_at = now()
          from routed r
         where j.job_id = r.job and r.job is not null),
    -- The pull events, made from the new rows themselves.
    pulls as (
        select nd.queue_name, x.chunk,
               json_agg(json_build_object('task', x.task_id, 'job', x.job_id, 'kind', x.kind,
                                          'data', x.payload, 'lane', x.lane,
                                          'options', nullif(x.options, ''))
                        order by x.task_id)::text as data
          from (select m.*,
                       coalesce(sum(octet_length(m.payload)) over w, 0) / 4194304 as chunk
                  from made m
                window w as (partition by m.node_name order by m.task_id
                             rows between unbounded preceding and 1 preceding)) x
          join pgfan.node nd on nd.node_name = x.node_name
         group by nd.queue_name, x.chunk)
    select (select count(*) from counted where n_tasks = 0) as empty,
           (select count(*) from counted where n_tasks > 0)
               - (select count(*) from routed) as existing,
           (select array_agg(coalesce(u.job, r.job_id) order by u.n)
              from unnest(i_ev_ids, i_jobs) with ordinality u(ev_id, job, n)
              left join routed r on r.n = u.n) as jobs,
           (select array_agg(p.queue_name order by p.queue_name, p.chunk) from pulls p) as queues,
           (select array_agg(p.data order by p.queue_name, p.chunk) from pulls p) as data
      into t;
    if t.empty > 0 then
        raise exception 'pgfan: a target of the batch resolves to no node';
    elsif t.existing > 0 then
        raise exception 'pgfan: a raw event of the batch has a job already';
    end if;
    if t.queues is not null and not v_bulk then
        -- The PgQ extension: its insert_event (C) costs about what a bulk write would.
        perform pgfan.enqueue(u.q, 'tasks', u.d, null, null, null, null)
           from unnest(t.queues, t.data) u(q, d);
    elsif t.queues is not null then
        -- The bundled core: one bulk call instead of a pgfan.enqueue per event (see
        -- above). Each queue gets the ticker's wake-up as pgfan.enqueue would send it,
        -- whatever its ticker settings.
        perform pg_notify('pgfan_ticker_wake', q) from (select distinct unnest(t.queues)) w(q);
        perform pgq._pgfan_insert_events(t.queues,
                                         array_fill('tasks'::text, array[cardinality(t.queues)]),
                                         t.data, null, null, null, null);
    end if;
    -- A submitted job cancelled before routing keeps no tasks; its id is returned still.
    return t.jobs;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp
set jit = off;
