-- pgq.drop_queue(queue[, force]): remove a queue with its tables, ticks and sequences.
--
-- Without force a queue that still has consumers is refused, since dropping it would
-- silently lose their unread events. With force the subscriptions, their pending
-- retries and consumer names no other queue uses are removed first. insert_event_raw is
-- rebuilt without the queue's INSERTs. Returns 1.
create or replace function pgq.drop_queue(x_queue_name text)
returns integer as $$
begin
    return pgq.drop_queue(x_queue_name, false);
end;
$$ language plpgsql strict;

create or replace function pgq.drop_queue(x_queue_name text, x_force boolean)
returns integer as $$
declare
    q record;
    v_nr integer;
begin
    select queue_id, queue_data_pfx, queue_ntables, queue_event_seq, queue_tick_seq into q
        from pgq.queue
        where queue_name = x_queue_name
        for update;
    if not found then
        raise exception 'No such event queue';
    end if;

    if x_force then
        delete from pgq.retry_queue where ev_queue = q.queue_id;
        with gone as (
            delete from pgq.subscription where sub_queue = q.queue_id returning sub_consumer
        )
        delete from pgq.consumer c
            where c.co_id in (select sub_consumer from gone)
              and not exists (select 1 from pgq.subscription s
                              where s.sub_consumer = c.co_id and s.sub_queue <> q.queue_id);
    elsif exists (select 1 from pgq.subscription where sub_queue = q.queue_id) then
        raise exception 'cannot drop queue, consumers still attached';
    end if;

    for v_nr in 0 .. q.queue_ntables - 1 loop
        execute 'drop table ' || pgq.quote_fqname(q.queue_data_pfx || '_' || v_nr);
    end loop;
    execute 'drop table ' || pgq.quote_fqname(q.queue_data_pfx);

    delete from pgq.tick where tick_queue = q.queue_id;
    delete from pgq.retry_queue where ev_queue = q.queue_id;
    delete from pgq.queue where queue_id = q.queue_id;

    execute 'drop sequence ' || pgq.quote_fqname(q.queue_tick_seq);
    execute 'drop sequence ' || pgq.quote_fqname(q.queue_event_seq);
    perform pgq._pgfan_build_insert_event_raw();
    return 1;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
