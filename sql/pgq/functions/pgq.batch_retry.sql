-- pgq.batch_retry(batch_id, retry_seconds): schedule every event of the batch that is
-- not yet in retry_queue for redelivery to this consumer (see event_retry). Returns the
-- number of events queued now; events retried earlier in the batch are left as they are.

create or replace function pgq.batch_retry(
    i_batch_id bigint,
    i_retry_seconds integer)
returns integer as $$
declare
    _sub    integer;
    _queue  integer;
    _n      integer;
begin
    select s.sub_id, s.sub_queue into _sub, _queue
      from pgq.subscription s
     where s.sub_batch = i_batch_id;
    if not found then
        raise exception 'batch_retry: batch % not found', i_batch_id;
    end if;

    execute 'insert into pgq.retry_queue (ev_retry_after, ev_queue, ev_id, ev_time, ev_txid,'
         || ' ev_owner, ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4)'
         || ' select $1, $2, b.ev_id, b.ev_time, null, $3, coalesce(b.ev_retry, 0) + 1,'
         || ' b.ev_type, b.ev_data, b.ev_extra1, b.ev_extra2, b.ev_extra3, b.ev_extra4'
         || ' from (' || pgq.batch_event_sql(i_batch_id) || ') b'
         || ' where not exists (select 1 from pgq.retry_queue r'
         || '                    where r.ev_owner = $3 and r.ev_id = b.ev_id)'
         || ' on conflict do nothing'
        using now() + make_interval(secs => i_retry_seconds), _queue, _sub;
    get diagnostics _n = row_count;
    return _n;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
