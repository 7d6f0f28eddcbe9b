-- pgq.event_retry(batch_id, event_id, retry_time | retry_seconds): schedule one event of
-- the current batch for redelivery to this consumer only.
--
-- The event is copied into pgq.retry_queue with ev_owner = the subscription's sub_id and
-- ev_retry incremented; maint_retry_events later re-inserts it into the queue, where the
-- owner filter of batch_event_sql shows it to this subscription alone. The event is
-- looked up through the batch SQL, so only an event that belongs to the batch can be
-- retried. Returns 1 when queued, 0 when it was already queued for this subscription
-- (retrying twice within a batch is harmless).

create or replace function pgq.event_retry(
    x_batch_id bigint,
    x_event_id bigint,
    x_retry_time timestamptz)
returns integer as $$
declare
    _sub    integer;
    _queue  integer;
    _n      integer;
begin
    select s.sub_id, s.sub_queue into _sub, _queue
      from pgq.subscription s
     where s.sub_batch = x_batch_id;
    if not found then
        raise exception 'event not found';
    end if;

    perform 1 from pgq.retry_queue r where r.ev_owner = _sub and r.ev_id = x_event_id;
    if found then
        return 0;
    end if;

    execute 'insert into pgq.retry_queue (ev_retry_after, ev_queue, ev_id, ev_time, ev_txid,'
         || ' ev_owner, ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4)'
         || ' select $1, $2, b.ev_id, b.ev_time, null, $3, coalesce(b.ev_retry, 0) + 1,'
         || ' b.ev_type, b.ev_data, b.ev_extra1, b.ev_extra2, b.ev_extra3, b.ev_extra4'
         || ' from (' || pgq.batch_event_sql(x_batch_id) || ') b where b.ev_id = $4'
         || ' on conflict do nothing'
        using x_retry_time, _queue, _sub, x_event_id;
    get diagnostics _n = row_count;
    if _n > 0 then
        return 1;
    end if;

    -- nothing inserted: either a concurrent call queued it first, or not in this batch
    perform 1 from pgq.retry_queue r where r.ev_owner = _sub and r.ev_id = x_event_id;
    if found then
        return 0;
    end if;
    raise exception 'event not found';
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;

create or replace function pgq.event_retry(
    x_batch_id bigint,
    x_event_id bigint,
    x_retry_seconds integer)
returns integer as $$
begin
    return pgq.event_retry(x_batch_id, x_event_id,
                           now() + pg_catalog.make_interval(secs => x_retry_seconds));
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
