-- pgq.register_consumer(queue, consumer): subscribe a consumer at the queue's latest
-- tick; 1 if newly registered, 0 if it already was (its position is kept).

create or replace function pgq.register_consumer(
    x_queue_name text,
    x_consumer_id text)
returns integer as $$
begin
    return pgq.register_consumer_at(x_queue_name, x_consumer_id, null);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
