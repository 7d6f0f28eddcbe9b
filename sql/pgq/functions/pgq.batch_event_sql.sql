-- pgq.batch_event_sql(batch_id): the SQL text that selects the events of a batch.
--
-- A batch is the interval between two ticks; its events are those whose inserting
-- transaction is visible in the newer tick's snapshot (cur) and not in the older one's
-- (last). Every committed transaction is thus delivered exactly once per consumer,
-- without locking or updating event rows.
--
-- The only index on event tables is ev_txid, so the query must bound the txid range.
-- The naive range xmin(last)..xmax(cur) would be dragged down by a long-running
-- transaction and rescan the same rows for every batch while it runs. Instead the range
-- starts at xmax(last); transactions that were still running at the older tick and have
-- finished by the newer one (xip(last) minus xip(cur)) are added either by lowering the
-- range start (when they are close to it, a cheap extension) or as an explicit IN list.
--
-- Retried events re-enter the event tables with ev_owner = sub_id; the owner filter
-- shows them only to the subscription (and its pgq_coop subconsumers) that retried them.
--
-- The text contains only numbers and quoted table names, never caller data. Callers
-- (get_batch_events, get_batch_cursor, event_retry, batch_retry) rely on it ending in
-- ' order by 1'. Not SECURITY DEFINER: it only reads metadata the caller can see.

create or replace function pgq.batch_event_sql(x_batch_id bigint)
returns text as $$
declare
    _queue      integer;
    _sub        integer;
    _last_id    bigint;
    _cur_id     bigint;
    _last_snap  txid_snapshot;
    _cur_snap   txid_snapshot;
    _tx_start   bigint;
    _tx_end     bigint;
    _xid        bigint;
    _list       text := '';
    _cols       text := 'select ev_id, ev_time, ev_txid, ev_retry, ev_type, ev_data,'
                        ' ev_extra1, ev_extra2, ev_extra3, ev_extra4';
    _owner      text;
    _range      text;
    _tbl        text;
    _sql        text := '';
begin
    select s.sub_queue, s.sub_id, last.tick_id, last.tick_snapshot, cur.tick_id, cur.tick_snapshot
      into _queue, _sub, _last_id, _last_snap, _cur_id, _cur_snap
      from pgq.subscription s
      join pgq.tick last on last.tick_queue = s.sub_queue and last.tick_id = s.sub_last_tick
      join pgq.tick cur on cur.tick_queue = s.sub_queue and cur.tick_id = s.sub_next_tick
     where s.sub_batch = x_batch_id;
    if not found then
        raise exception 'batch not found';
    end if;

    _tx_start := pg_catalog.txid_snapshot_xmax(_last_snap);
    _tx_end := pg_catalog.txid_snapshot_xmax(_cur_snap);

    -- Transactions in progress at the older tick and finished by the newer one. They
    -- are all below xmax(last), so "visible in cur" means "not in xip(cur)". Walking
    -- downwards lets a run of nearby txids extend the range step by step.
    for _xid in
        select x.x
          from pg_catalog.txid_snapshot_xip(_last_snap) x(x)
         where pg_catalog.txid_visible_in_snapshot(x.x, _cur_snap)
         order by 1 desc
    loop
        if _xid >= _tx_start - 100 then
            _tx_start := _xid;
        else
            _list := _list || case when _list = '' then '' else ',' end || _xid;
        end if;
    end loop;

    _owner := ' and (ev_owner is null or ev_owner = ' || _sub || ')';
    _range := ' where cur.tick_id = ' || _cur_id || ' and cur.tick_queue = ' || _queue
           || ' and last.tick_id = ' || _last_id || ' and last.tick_queue = ' || _queue
           || ' and ev.ev_txid >= ' || _tx_start || ' and ev.ev_txid <= ' || _tx_end
           || ' and txid_visible_in_snapshot(ev.ev_txid, cur.tick_snapshot)'
           || ' and not txid_visible_in_snapshot(ev.ev_txid, last.tick_snapshot)'
           || _owner;

    for _tbl in select t.t from pgq.batch_event_tables(x_batch_id) t(t) loop
        if _sql <> '' then
            _sql := _sql || ' union all ';
        end if;
        _sql := _sql || _cols || ' from pgq.tick cur, pgq.tick last, ' || _tbl || ' ev ' || _range;
        if _list <> '' then
            _sql := _sql || ' union all ' || _cols || ' from ' || _tbl || ' ev '
                 || ' where ev.ev_txid in (' || _list || ')' || _owner;
        end if;
    end loop;

    return _sql || ' order by 1';
end;
$$ language plpgsql;
