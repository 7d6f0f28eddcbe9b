-- pgq._pgfan_insert_events(queues, types, data, extra1..4): pgq.insert_event for every
-- element of the arrays, in one call; returns the event ids in input order.
--
-- Why: the relay writes one event into each of up to thousands of queues in one
-- transaction (a job for every node; each node has a queue of its own). Through
-- insert_event each such event costs a PL/pgSQL call, a queue look-up and, for a queue
-- past the 256 that the generated insert_event_raw covers, the general path's dynamic
-- INSERT behind a quote_fqname call. Here the queues are looked up in one query and each
-- event is one dynamic INSERT straight into its queue's current event table, the way PgQ
-- lets bulk producers write (pgq.current_event_table). Measured on a master with 1,000
-- node queues, one event each in one transaction: 46 ms through insert_event, 29 ms
-- here, of which the INSERTs' parse and plan are about 40% (perf). An INSERT per event
-- cannot be avoided, since every queue has its own tables; writable CTEs, one per table,
-- were slower (all 1,000 in one statement 130+ ms; in statements of 25 to 100, 35-45 ms).
--
-- Every event gets what insert_event would give it: the id from the queue's sequence,
-- now(), no owner or retry count, and for low-latency queues the ticker's wake-up
-- NOTIFY (see pgq.insert_event_raw.sql). Queues that insert_event treats specially (insert
-- disabled, a per-transaction limit, tables not named by queue id, an unknown or NULL name)
-- take pgq.insert_event itself, which applies or refuses them exactly as it does one by one.
-- The events are written in input order, so the events of a queue get ascending ids.
-- The event values are bound as parameters, never put into the statement text.
--
-- Private (pgq._pgfan_*, owner-only, not part of PgQ's API): pgfan.route_batch calls it
-- when the bundled core is installed; with the PgQ extension, whose insert_event is C, it
-- writes through insert_event.
-- SECURITY DEFINER so that it writes the event tables as the core's owner, whoever owns
-- its caller.
create or replace function pgq._pgfan_insert_events(
    i_queues text[], i_types text[], i_data text[],
    i_extra1 text[], i_extra2 text[], i_extra3 text[], i_extra4 text[])
returns bigint[] as $$
declare
    e record;
    v_ids bigint[] := '{}';
    v_id bigint;
    v_woke text;
begin
    for e in
        select u.n::integer as n, u.queue, u.ev_type, u.ev_data, u.x1, u.x2, u.x3, u.x4,
               -- The same test as the generated insert_event_raw's static branches.
               coalesce(not q.queue_disable_insert and q.queue_per_tx_limit is null
                        and q.queue_data_pfx = 'pgq.event_' || q.queue_id, false) as direct,
               'event_' || q.queue_id || '_' || q.queue_cur_table as tbl,
               q.queue_event_seq::regclass as seq,
               coalesce(q.queue_ticker_max_lag = '0' and not q.queue_ticker_paused
                        and not q.queue_external_ticker, false) as wake
          from unnest(i_queues, i_types, i_data, i_extra1, i_extra2, i_extra3, i_extra4)
               with ordinality u(queue, ev_type, ev_data, x1, x2, x3, x4, n)
          left join pgq.queue q on q.queue_name = u.queue
         order by u.n
    loop
        if e.direct then
            if e.wake then
                -- An assignment is evaluated as a simple expression, cheaper than PERFORM.
                v_woke := pg_notify('pgfan_ticker_wake', e.queue)::text;
            end if;
            execute format(
                'insert into pgq.%I (ev_id, ev_time, ev_type, ev_data,'
                ' ev_extra1, ev_extra2, ev_extra3, ev_extra4)'
                ' values (pg_catalog.nextval($1), pg_catalog.now(), $2, $3, $4, $5, $6, $7)'
                ' returning ev_id', e.tbl)
                into v_id
                using e.seq, e.ev_type, e.ev_data, e.x1, e.x2, e.x3, e.x4;
        else
            v_id := pgq.insert_event(e.queue, e.ev_type, e.ev_data, e.x1, e.x2, e.x3, e.x4);
        end if;
        v_ids[e.n] := v_id;
    end loop;
    return v_ids;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
