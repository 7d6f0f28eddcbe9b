-- pgq_ext.set_batch_done(consumer[, subconsumer], batch_id): record that the batch has
-- been applied; call it in the same transaction as the writes. Returns false when it
-- was already recorded (nothing changes), true otherwise.

create or replace function pgq_ext.set_batch_done(
    a_consumer text,
    a_subconsumer text,
    a_batch_id bigint)
returns boolean as $$
begin
    insert into pgq_ext.completed_batch (consumer_id, subconsumer_id, last_batch_id)
    values (a_consumer, a_subconsumer, a_batch_id)
        on conflict (consumer_id, subconsumer_id) do update
       set last_batch_id = excluded.last_batch_id
     where pgq_ext.completed_batch.last_batch_id is distinct from excluded.last_batch_id;
    return found;
end;
$$ language plpgsql;

create or replace function pgq_ext.set_batch_done(
    a_consumer text,
    a_batch_id bigint)
returns boolean as $$
begin
    return pgq_ext.set_batch_done(a_consumer, '', a_batch_id);
end;
$$ language plpgsql;
