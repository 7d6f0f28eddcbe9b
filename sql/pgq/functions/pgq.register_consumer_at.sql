-- pgq.register_consumer_at(queue, consumer, tick_pos): subscribe a consumer to a queue,
-- or move an existing subscription.
--
-- With tick_pos NULL a new subscription starts at the queue's latest tick (it sees
-- events ticked after registration) and an existing one is left alone. With tick_pos
-- given, a new subscription starts there and an existing one is repositioned there,
-- dropping its open batch (SerialConsumer --rewind, cascade takeover). The consumer row
-- is created on first use. Returns 1 for a new subscription, 0 otherwise.

create or replace function pgq.register_consumer_at(
    x_queue_name text,
    x_consumer_name text,
    x_tick_pos bigint)
returns integer as $$
declare
    _queue      integer;
    _consumer   integer;
    _tick       bigint := x_tick_pos;
begin
    select q.queue_id into _queue from pgq.queue q where q.queue_name = x_queue_name;
    if not found then
        raise exception 'Event queue not created yet';
    end if;

    if _tick is not null then
        perform 1 from pgq.tick t where t.tick_queue = _queue and t.tick_id = _tick;
        if not found then
            raise exception 'cannot reposition, tick not found: %', _tick;
        end if;
    end if;

    select c.co_id into _consumer from pgq.consumer c where c.co_name = x_consumer_name;
    if not found then
        insert into pgq.consumer (co_name) values (x_consumer_name)
            on conflict (co_name) do nothing
            returning co_id into _consumer;
        if _consumer is null then
            -- created by a concurrent transaction that has committed meanwhile
            select c.co_id into _consumer from pgq.consumer c where c.co_name = x_consumer_name;
        end if;
    end if;

    perform 1 from pgq.subscription s where s.sub_queue = _queue and s.sub_consumer = _consumer;
    if found then
        if _tick is not null then
            update pgq.subscription
               set sub_last_tick = _tick,
                   sub_active = now(),
                   sub_batch = null,
                   sub_next_tick = null
             where sub_queue = _queue
               and sub_consumer = _consumer;
        end if;
        return 0;
    end if;

    if _tick is null then
        select t.tick_id into _tick
          from pgq.tick t
         where t.tick_queue = _queue
         order by t.tick_queue desc, t.tick_id desc
         limit 1;
        if not found then
            raise exception 'No ticks for this queue.  Please run ticker on database.';
        end if;
    end if;

    insert into pgq.subscription (sub_queue, sub_consumer, sub_last_tick)
    values (_queue, _consumer, _tick)
        on conflict (sub_queue, sub_consumer) do nothing;
    if not found then
        return 0;   -- a concurrent call registered it first
    end if;
    return 1;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
