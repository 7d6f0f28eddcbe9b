-- pgfan.job_from_event(queue, ev_id, kind, target, params, reduce, policy, timeout):
-- the job row for a raw push event (one that pgfan.submit did not create).
--
-- Keyed by (queue, ev_id), so a redelivered event finds its job instead of making a
-- second one. A reduce other than a shorthand must come from the event itself unless the
-- caller is trusted with the owner's rights (pgfan.check_raw_reduce). Returns the job id. PL/pgSQL for its cached plan: a SQL function with a SET
-- clause is planned again at every call.
create or replace function pgfan.job_from_event(
    i_queue text, i_ev_id bigint, i_kind text, i_target text, i_params jsonb,
    i_reduce text, i_policy text, i_timeout interval)
returns bigint as $$
declare
    v_job bigint;
begin
    perform pgfan.check_raw_reduce(i_queue, array[i_ev_id], array[i_reduce]);
    insert into pgfan.job (kind, target, params, reduce, policy, deadline, submitted_by,
                           source_queue, source_ev_id)
    values (i_kind, i_target, i_params, i_reduce, coalesce(i_policy, 'all'),
            now() + i_timeout, current_user, i_queue, i_ev_id)
    on conflict (source_queue, source_ev_id) do update set kind = excluded.kind
    returning job_id into v_job;
    return v_job;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
