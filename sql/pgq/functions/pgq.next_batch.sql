-- pgq.next_batch(queue, consumer): id of the consumer's next (or still open) batch, NULL
-- when there is none yet. Thin wrapper over next_batch_custom, which holds the logic.

create or replace function pgq.next_batch(
    i_queue_name text,
    i_consumer_name text)
returns bigint as $$
declare
    _batch_id bigint;
begin
    select f.batch_id into _batch_id
      from pgq.next_batch_custom(i_queue_name, i_consumer_name, null, null, null) f;
    return _batch_id;
end;
$$ language plpgsql;
