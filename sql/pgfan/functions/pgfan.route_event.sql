-- pgfan.route_event(source, ev_id, job, kind, target, params, reduce, policy, timeout,
--                   payloads, lane, parallel, options): route one push event in one call.
--
-- The relay parses the event and sends everything here, so an event costs one statement
-- (and a whole batch one pipelined exchange) instead of a job look-up, a job insert and a
-- routing call each waiting for the previous. i_job is the job pgfan.submit made; NULL for
-- the raw form, whose job is made (or found again, on redelivery) by job_from_event.
-- Lanes: i_lane for every task, else with i_parallel one of that many lanes per job
-- ('<job>:<n>'), else none. Returns the job id.
-- SECURITY DEFINER: the relay's door (pgfan_relay needs no right on pgfan's tables or
-- queues); a raw event's reduce SQL is checked by job_from_event.
create or replace function pgfan.route_event(
    i_source text, i_ev_id bigint, i_job bigint, i_kind text, i_target text, i_params jsonb,
    i_reduce text, i_policy text, i_timeout interval, i_payloads text[], i_lane text,
    i_parallel integer, i_options text)
returns bigint as $$
declare
    v_job bigint := i_job;
    v_lanes text[];
begin
    if v_job is null then
        v_job := pgfan.job_from_event(i_source, i_ev_id, i_kind, i_target, i_params,
                                      i_reduce, i_policy, i_timeout);
    end if;
    select array_agg(case
                         when i_lane is not null then i_lane
                         when i_parallel is not null and cardinality(i_payloads) > 1
                             then v_job || ':' || ((n - 1) % i_parallel)
                     end order by n)
      into v_lanes
      from generate_series(1, coalesce(cardinality(i_payloads), 0)) n;
    perform pgfan.route_job(v_job, i_payloads, v_lanes, i_options);
    return v_job;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
