-- pgq.batch_event_tables(batch_id): the event tables that can hold events of a batch.
--
-- A queue rotates over queue_ntables child tables, but a batch only ever needs the
-- current table and the one before it: the rotation (maint_rotate_tables_step1) refuses
-- to truncate the previous table while any consumer's last tick may still need it.
-- Comparing the batch's txid range with the rotation txids lets most batches read a
-- single table:
--   * everything committed before the rotation (xmax of the newer tick < switch_step1)
--     is in the previous table;
--   * nothing older than step2 can be in the batch (xmin of the older tick > step2),
--     so the current table is enough;
--   * otherwise both.
-- Names are returned already quoted so batch_event_sql can splice them into SQL text.
-- Internal helper, deliberately not SECURITY DEFINER: callers run the resulting SQL
-- with their own rights anyway.

create or replace function pgq.batch_event_tables(x_batch_id bigint)
returns setof text as $$
declare
    _pfx        text[];
    _schema     text;
    _cur        integer;
    _ntables    integer;
    _step1      bigint;
    _step2      bigint;
    _tx_min     bigint;
    _tx_max     bigint;
    _cur_tbl    text;
    _prev_tbl   text;
begin
    select pg_catalog.parse_ident(q.queue_data_pfx), q.queue_cur_table, q.queue_ntables,
           q.queue_switch_step1, q.queue_switch_step2,
           pg_catalog.txid_snapshot_xmin(last.tick_snapshot),
           pg_catalog.txid_snapshot_xmax(cur.tick_snapshot)
      into _pfx, _cur, _ntables, _step1, _step2, _tx_min, _tx_max
      from pgq.subscription s
      join pgq.queue q on q.queue_id = s.sub_queue
      join pgq.tick last on last.tick_queue = s.sub_queue and last.tick_id = s.sub_last_tick
      join pgq.tick cur on cur.tick_queue = s.sub_queue and cur.tick_id = s.sub_next_tick
     where s.sub_batch = x_batch_id;
    if not found then
        raise exception 'Cannot find data for batch %', x_batch_id;
    end if;

    -- queue_data_pfx is 'schema.name'; the table number is a suffix of the last part.
    if pg_catalog.array_length(_pfx, 1) > 1 then
        _schema := pg_catalog.quote_ident(_pfx[1]) || '.';
    else
        _schema := '';
    end if;
    _cur_tbl := _schema || pg_catalog.quote_ident(_pfx[pg_catalog.array_length(_pfx, 1)] || '_' || _cur);
    _prev_tbl := _schema || pg_catalog.quote_ident(_pfx[pg_catalog.array_length(_pfx, 1)] || '_'
                 || ((_cur + _ntables - 1) % _ntables));

    if _tx_max < _step1 then
        return next _prev_tbl;
    elsif _step2 is not null and _tx_min > _step2 then
        return next _cur_tbl;
    else
        return next _prev_tbl;
        return next _cur_tbl;
    end if;
    return;
end;
$$ language plpgsql;
