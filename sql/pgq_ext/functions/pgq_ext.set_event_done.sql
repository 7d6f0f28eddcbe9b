-- pgq_ext.set_event_done(consumer[, subconsumer], batch_id, event_id): record that one
-- event has been applied; returns false if it already was.
--
-- Only the current batch's events are needed (earlier batches are finished), so when
-- the batch changes, as tracked in partial_batch, the previous batch's rows are
-- deleted; the table stays the size of one batch.

create or replace function pgq_ext.set_event_done(
    a_consumer text,
    a_subconsumer text,
    a_batch_id bigint,
    a_event_id bigint)
returns boolean as $$
declare
    _old bigint;
begin
    select p.cur_batch_id into _old
      from pgq_ext.partial_batch p
     where p.consumer_id = a_consumer
       and p.subconsumer_id = a_subconsumer
       for update;
    if not found then
        insert into pgq_ext.partial_batch (consumer_id, subconsumer_id, cur_batch_id)
        values (a_consumer, a_subconsumer, a_batch_id);
    elsif _old <> a_batch_id then
        delete from pgq_ext.completed_event e
         where e.consumer_id = a_consumer
           and e.subconsumer_id = a_subconsumer
           and e.batch_id <> a_batch_id;
        update pgq_ext.partial_batch p
           set cur_batch_id = a_batch_id
         where p.consumer_id = a_consumer
           and p.subconsumer_id = a_subconsumer;
    end if;

    insert into pgq_ext.completed_event (consumer_id, subconsumer_id, batch_id, event_id)
    values (a_consumer, a_subconsumer, a_batch_id, a_event_id)
        on conflict do nothing;
    return found;
end;
$$ language plpgsql;

create or replace function pgq_ext.set_event_done(
    a_consumer text,
    a_batch_id bigint,
    a_event_id bigint)
returns boolean as $$
begin
    return pgq_ext.set_event_done(a_consumer, '', a_batch_id, a_event_id);
end;
$$ language plpgsql;
