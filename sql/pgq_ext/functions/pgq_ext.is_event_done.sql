-- pgq_ext.is_event_done(consumer[, subconsumer], batch_id, event_id): has this event of
-- the batch already been applied? For consumers that commit per event (or per group of
-- events) inside a batch; see set_event_done.

create or replace function pgq_ext.is_event_done(
    a_consumer text,
    a_subconsumer text,
    a_batch_id bigint,
    a_event_id bigint)
returns boolean as $$
    select exists (
        select 1
          from pgq_ext.completed_event e
         where e.consumer_id = a_consumer
           and e.subconsumer_id = a_subconsumer
           and e.batch_id = a_batch_id
           and e.event_id = a_event_id);
$$ language sql stable;

create or replace function pgq_ext.is_event_done(
    a_consumer text,
    a_batch_id bigint,
    a_event_id bigint)
returns boolean as $$
    select pgq_ext.is_event_done(a_consumer, '', a_batch_id, a_event_id);
$$ language sql stable;
