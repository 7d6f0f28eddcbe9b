-- pgq_ext.is_batch_done(consumer[, subconsumer], batch_id): has this batch already been
-- applied to this database? A RemoteConsumer asks this after next_batch: after a crash
-- between the remote commit and finish_batch the queue hands out the same batch id
-- again, and this says to skip it. Only the latest batch id is kept (batches of one
-- consumer are strictly sequential), and only an exact match counts: a batch with
-- another id is new work, so a surprise never leads to silently skipped events.

create or replace function pgq_ext.is_batch_done(
    a_consumer text,
    a_subconsumer text,
    a_batch_id bigint)
returns boolean as $$
    select coalesce(
        (select b.last_batch_id = a_batch_id
           from pgq_ext.completed_batch b
          where b.consumer_id = a_consumer
            and b.subconsumer_id = a_subconsumer),
        false);
$$ language sql stable;

create or replace function pgq_ext.is_batch_done(
    a_consumer text,
    a_batch_id bigint)
returns boolean as $$
    select pgq_ext.is_batch_done(a_consumer, '', a_batch_id);
$$ language sql stable;
