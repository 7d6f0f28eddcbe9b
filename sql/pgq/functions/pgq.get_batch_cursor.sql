-- pgq.get_batch_cursor(batch_id, cursor_name, quick_limit[, extra_where]): read a big
-- batch lazily. Declares a NO SCROLL cursor named cursor_name over the batch's events
-- and returns its first quick_limit rows; the caller FETCHes the rest from the cursor
-- in the same transaction and closes it (python-pgq's pgq_lazy_fetch).
--
-- extra_where is raw SQL over the event columns (python-pgq's table_filter builds
-- "ev_extra1 in (...)"). Because it is spliced into the query text, these functions
-- must never be SECURITY DEFINER: the filter runs with exactly the caller's rights.

create or replace function pgq.get_batch_cursor(
    in i_batch_id bigint,
    in i_cursor_name text,
    in i_quick_limit int4,
    in i_extra_where text,
    out ev_id bigint,
    out ev_time timestamptz,
    out ev_txid bigint,
    out ev_retry int4,
    out ev_type text,
    out ev_data text,
    out ev_extra1 text,
    out ev_extra2 text,
    out ev_extra3 text,
    out ev_extra4 text)
returns setof record as $$
declare
    _sql text;
begin
    _sql := pgq.batch_event_sql(i_batch_id);
    if i_extra_where is not null then
        -- batch_event_sql ends in ' order by 1'; filter the union, then sort once.
        _sql := 'select * from (' || left(_sql, -length(' order by 1'))
             || ') _evs where (' || i_extra_where || ') order by 1';
    end if;
    execute format('declare %I no scroll cursor for %s', i_cursor_name, _sql);
    -- FETCH 0 would re-read the "current" row; no quick rows means no fetch at all
    if i_quick_limit > 0 then
        return query execute format('fetch %s from %I', i_quick_limit, i_cursor_name);
    end if;
end;
$$ language plpgsql;

create or replace function pgq.get_batch_cursor(
    in i_batch_id bigint,
    in i_cursor_name text,
    in i_quick_limit int4,
    out ev_id bigint,
    out ev_time timestamptz,
    out ev_txid bigint,
    out ev_retry int4,
    out ev_type text,
    out ev_data text,
    out ev_extra1 text,
    out ev_extra2 text,
    out ev_extra3 text,
    out ev_extra4 text)
returns setof record as $$
begin
    return query
        select * from pgq.get_batch_cursor(i_batch_id, i_cursor_name, i_quick_limit, null);
end;
$$ language plpgsql strict;
