-- pgq_ext.set_last_tick(consumer[, subconsumer], tick_id): record the last tick applied,
-- in the same transaction as the writes. NULL forgets the position (consumer reset).
-- Returns 1.

create or replace function pgq_ext.set_last_tick(
    a_consumer text,
    a_subconsumer text,
    a_tick_id bigint)
returns integer as $$
begin
    if a_tick_id is null then
        delete from pgq_ext.completed_tick t
         where t.consumer_id = a_consumer
           and t.subconsumer_id = a_subconsumer;
    else
        insert into pgq_ext.completed_tick (consumer_id, subconsumer_id, last_tick_id)
        values (a_consumer, a_subconsumer, a_tick_id)
            on conflict (consumer_id, subconsumer_id) do update
           set last_tick_id = excluded.last_tick_id;
    end if;
    return 1;
end;
$$ language plpgsql;

create or replace function pgq_ext.set_last_tick(
    a_consumer text,
    a_tick_id bigint)
returns integer as $$
begin
    return pgq_ext.set_last_tick(a_consumer, '', a_tick_id);
end;
$$ language plpgsql;
