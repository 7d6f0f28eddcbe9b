-- pgq.finish_batch(batch_id): close a batch; the consumer's position moves to the
-- batch's end tick. Call it in the same transaction as the processing for exactly-once
-- delivery within this database. An unknown (e.g. already finished) batch only warns
-- and returns 0, so a repeated finish after a reconnect does not break the consumer.

create or replace function pgq.finish_batch(
    x_batch_id bigint)
returns integer as $$
begin
    update pgq.subscription
       set sub_active = now(),
           sub_last_tick = sub_next_tick,
           sub_next_tick = null,
           sub_batch = null
     where sub_batch = x_batch_id;
    if not found then
        raise warning 'finish_batch: batch % not found', x_batch_id;
        return 0;
    end if;
    return 1;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
