-- pgq.insert_event_raw(queue, ev_id, ev_time, ev_owner, ev_retry, type, data, extra1..4):
-- append one event to the queue's current event table.
--
-- This is the single write path for events (insert_event, the retry mover and
-- cascading all end here), so it is kept to one queue look-up and one INSERT.
-- The event sequence is advanced even when ev_id is given: the ticker measures
-- "new events" by that sequence, so retried events must move it too.
-- ev_txid comes from the table default (txid_current()), which is what batches select on.
-- queue_per_tx_limit is counted in a transaction-local setting, so the count
-- vanishes at commit/rollback and also drops events of rolled-back savepoints.
create or replace function pgq.insert_event_raw(
    queue_name text, ev_id bigint, ev_time timestamptz, ev_owner integer, ev_retry integer,
    ev_type text, ev_data text, ev_extra1 text, ev_extra2 text, ev_extra3 text, ev_extra4 text)
returns bigint as $$
declare
    q record;
    v_count integer;
    v_id bigint;
begin
    if queue_name is null then
        raise exception 'Queue name must not be NULL' using errcode = 'internal_error';
    end if;
    select t.queue_id, t.queue_data_pfx, t.queue_cur_table, t.queue_event_seq,
           t.queue_disable_insert, t.queue_per_tx_limit
        into q
        from pgq.queue t
        where t.queue_name = insert_event_raw.queue_name;
    if not found then
        raise exception 'No such queue' using errcode = 'internal_error';
    end if;
    -- Taken before the checks below, as PgQ does: a refused event still uses an id.
    v_id := nextval(q.queue_event_seq::regclass);
    if q.queue_disable_insert and current_setting('session_replication_role') <> 'replica' then
        raise exception 'Insert into queue disallowed' using errcode = 'internal_error';
    end if;
    if q.queue_per_tx_limit is not null then
        v_count := coalesce(nullif(current_setting('pgq_tx_limit.q' || q.queue_id, true), ''), '0')::integer;
        if v_count >= q.queue_per_tx_limit then
            raise exception 'Queue ''%'' allows max % events from one TX', queue_name, q.queue_per_tx_limit
                using errcode = 'internal_error';
        end if;
        perform set_config('pgq_tx_limit.q' || q.queue_id, (v_count + 1)::text, true);
    end if;
    if insert_event_raw.ev_id is not null then
        v_id := insert_event_raw.ev_id;
    end if;
    execute 'insert into ' || pgq.quote_fqname(q.queue_data_pfx || '_' || q.queue_cur_table)
        || ' (ev_id, ev_time, ev_owner, ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4)'
        || ' values ($1, coalesce($2, now()), $3, $4, $5, $6, $7, $8, $9, $10)'
        using v_id, ev_time, ev_owner, ev_retry, ev_type, ev_data,
              ev_extra1, ev_extra2, ev_extra3, ev_extra4;
    return v_id;
end;
$$ language plpgsql cost 1;
