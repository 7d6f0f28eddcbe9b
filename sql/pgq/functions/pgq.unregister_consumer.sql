-- pgq.unregister_consumer(queue, consumer): drop a subscription. Returns the number of
-- subscription rows removed, 0 when the consumer was not subscribed.
--
-- pgq_coop subconsumers share the main consumer's sub_id, and their retried events are
-- owned by that sub_id too, so all of them go together. A dead subscription blocks table
-- rotation forever, which is why removing it must be cheap and complete. The consumer
-- row is removed once no queue uses it any more.

create or replace function pgq.unregister_consumer(
    x_queue_name text,
    x_consumer_name text)
returns integer as $$
declare
    _queue      integer;
    _consumer   integer;
    _sub        integer;
    _n          integer;
begin
    select s.sub_queue, s.sub_consumer, s.sub_id
      into _queue, _consumer, _sub
      from pgq.queue q
      join pgq.consumer c on c.co_name = x_consumer_name
      join pgq.subscription s on s.sub_queue = q.queue_id and s.sub_consumer = c.co_id
     where q.queue_name = x_queue_name
       for update of s;
    if not found then
        return 0;
    end if;

    delete from pgq.retry_queue r
     where r.ev_owner = _sub
       and r.ev_queue = _queue;

    delete from pgq.subscription s
     where s.sub_queue = _queue
       and s.sub_id = _sub;
    get diagnostics _n = row_count;

    delete from pgq.consumer c
     where c.co_id = _consumer
       and not exists (select 1 from pgq.subscription s where s.sub_consumer = _consumer);

    return _n;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
