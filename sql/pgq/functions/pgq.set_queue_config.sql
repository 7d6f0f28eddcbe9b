-- pgq.set_queue_config(queue, param, value): change one ticker/rotation setting.
--
-- param is the pgq.queue column without its "queue_" prefix. Only the settings that
-- are safe to change on a live queue are accepted (not ntables, data_pfx, ...).
-- The value is passed as a literal and converted by the column type, so a bad value
-- fails with the type's own message. Returns 1. Changing ticker_max_lag, ticker_paused or
-- external_ticker rebuilds the generated insert functions (pgq.insert_event_raw.sql),
-- which wake pgfan's ticker for queues with ticker_max_lag 0.
create or replace function pgq.set_queue_config(x_queue_name text, x_param_name text, x_param_value text)
returns integer as $$
begin
    if x_queue_name is null or x_param_name is null then
        raise exception 'Invalid NULL value';
    end if;
    perform 1 from pgq.queue where queue_name = x_queue_name;
    if not found then
        raise exception 'No such event queue';
    end if;
    if x_param_name not in ('ticker_max_count', 'ticker_max_lag', 'ticker_idle_period',
                            'ticker_paused', 'rotation_period', 'external_ticker') then
        -- The trailing "s" reproduces PgQ's message text exactly.
        raise exception 'cannot change parameter "%s"', x_param_name;
    end if;
    execute format('update pgq.queue set %I = %L where queue_name = %L',
                   'queue_' || x_param_name, x_param_value, x_queue_name);
    -- These decide whether the queue's inserts wake pgfan's ticker, which the generated
    -- insert functions have compiled in (see pgq.insert_event_raw.sql).
    if x_param_name in ('ticker_max_lag', 'ticker_paused', 'external_ticker') then
        perform pgq._pgfan_build_insert_event_raw();
    end if;
    return 1;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
