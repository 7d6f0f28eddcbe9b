-- pgq_ext.get_last_tick(consumer[, subconsumer]): the last tick applied to this database
-- by a tick-tracking consumer (SerialConsumer), NULL if none recorded. The consumer
-- compares it with its queue position to skip a replayed batch or detect a lost one.

create or replace function pgq_ext.get_last_tick(
    a_consumer text,
    a_subconsumer text)
returns bigint as $$
    select t.last_tick_id
      from pgq_ext.completed_tick t
     where t.consumer_id = a_consumer
       and t.subconsumer_id = a_subconsumer;
$$ language sql stable;

create or replace function pgq_ext.get_last_tick(
    a_consumer text)
returns bigint as $$
    select pgq_ext.get_last_tick(a_consumer, '');
$$ language sql stable;
