-- pgq.ticker(...): create ticks, the batch boundaries consumers read between.
--
-- A tick stores txid_current_snapshot() (column default); a batch is the set of
-- transactions visible in its end tick's snapshot but not in its start tick's.
-- Callers must not run ticker() concurrently for one queue: the snapshot is taken
-- before any lock could be, so ticks could get ids out of snapshot order. The daemon
-- serializes its calls instead.
--
-- ticker(queue) ticks only when it is worth a batch: once queue_ticker_max_count
-- events are waiting or the oldest has waited queue_ticker_max_lag. An idle queue
-- still ticks (consumers report lag from tick times), but backs off exponentially:
-- only after max_lag/2 and after twice the previous gap, or after
-- queue_ticker_idle_period at the latest. "Waiting events" is the event sequence
-- minus the last tick's tick_event_seq, which is why insert_event_raw always advances
-- the sequence. Returns the new tick id, or NULL when no tick was due.
create or replace function pgq.ticker(i_queue_name text)
returns bigint as $$
declare
    q record;
    v_last record;
    v_prev_time timestamptz;
    v_seq bigint;
    v_cur_txid bigint;
    v_new bigint;
    v_lag interval;
    v_tick_id bigint;
begin
    select queue_id, queue_event_seq, queue_tick_seq, queue_external_ticker, queue_ticker_paused,
           queue_ticker_max_count, queue_ticker_max_lag, queue_ticker_idle_period
        into q
        from pgq.queue
        where queue_name = i_queue_name;
    if not found then
        raise exception 'no such queue';
    end if;
    if q.queue_external_ticker then
        raise exception 'This queue has external tick source.';
    end if;
    if q.queue_ticker_paused then
        raise exception 'Ticker has been paused for this queue';
    end if;

    v_seq := pgq.seq_getval(q.queue_event_seq);
    select tick_id, tick_time, tick_event_seq,
           txid_snapshot_xmin(tick_snapshot) as snap_xmin,
           txid_snapshot_xmax(tick_snapshot) as snap_xmax
        into v_last
        from pgq.tick
        where tick_queue = q.queue_id
        order by tick_queue desc, tick_id desc
        limit 1;
    if found then
        -- A restore into a cluster with a lower txid epoch would make every old
        -- snapshot look like the future and batches select nothing. Compared with the
        -- current snapshot's xmax rather than txid_current(): asking for a txid would
        -- assign one, and a call that does not tick must not write WAL.
        v_cur_txid := txid_snapshot_xmax(txid_current_snapshot());
        if v_last.snap_xmin > v_cur_txid then
            raise exception 'Invalid PgQ state: old xmin=%, old xmax=%, cur txid=%',
                v_last.snap_xmin, v_last.snap_xmax, v_cur_txid;
        end if;
        v_new := v_seq - v_last.tick_event_seq;
        if v_new < 0 then
            raise warning 'Negative new_events?  old=% cur=%', v_last.tick_event_seq, v_seq;
            v_new := 0;
        end if;
        v_lag := now() - v_last.tick_time;
        if v_new > 0 then
            if v_new < q.queue_ticker_max_count and v_lag < q.queue_ticker_max_lag then
                return null;
            end if;
        else
            select tick_time into v_prev_time
                from pgq.tick
                where tick_queue = q.queue_id and tick_id < v_last.tick_id
                order by tick_queue desc, tick_id desc
                limit 1;
            if found
               and (v_lag < q.queue_ticker_max_lag / 2
                    or (v_lag < 2 * (v_last.tick_time - v_prev_time)
                        and v_lag < q.queue_ticker_idle_period)) then
                return null;
            end if;
        end if;
    end if;

    insert into pgq.tick (tick_queue, tick_id, tick_event_seq)
        values (q.queue_id, nextval(q.queue_tick_seq::regclass), v_seq)
        returning tick_id into v_tick_id;
    return v_tick_id;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;

-- ticker(): tick every queue that has its own ticker and is not paused; returns how
-- many ticks were made. This is what the ticker daemon calls every ticker_period.
create or replace function pgq.ticker()
returns bigint as $$
declare
    v_queue text;
    v_ticks bigint := 0;
begin
    for v_queue in
        select queue_name
            from pgq.queue
            where not queue_external_ticker and not queue_ticker_paused
            order by queue_id
    loop
        if pgq.ticker(v_queue) is not null then
            v_ticks := v_ticks + 1;
        end if;
    end loop;
    return v_ticks;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;

-- ticker(queue, tick_id, orig_timestamp, event_seq): copy a tick made elsewhere.
--
-- Cascaded queues (pgq_node) replay the provider's ticks so that tick ids, times and
-- event positions match across nodes; the snapshot is still the local one. The local
-- sequences are moved forward so get_queue_info and later local ticks stay consistent.
create or replace function pgq.ticker(
    i_queue_name text, i_tick_id bigint, i_orig_timestamp timestamptz, i_event_seq bigint)
returns bigint as $$
declare
    q record;
begin
    select queue_id, queue_event_seq, queue_tick_seq into q
        from pgq.queue
        where queue_name = i_queue_name
          and queue_external_ticker
          and not queue_ticker_paused;
    if not found then
        raise exception 'queue not found or ticker disabled: %', i_queue_name;
    end if;
    insert into pgq.tick (tick_queue, tick_id, tick_time, tick_event_seq)
        values (q.queue_id, i_tick_id, i_orig_timestamp, i_event_seq);
    perform pgq.seq_setval(q.queue_tick_seq, i_tick_id);
    perform pgq.seq_setval(q.queue_event_seq, i_event_seq);
    return i_tick_id;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
