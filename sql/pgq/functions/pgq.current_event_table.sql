-- pgq.current_event_table(queue): the event table inserts currently go to.
--
-- For bulk producers that INSERT or COPY straight into the table (the child tables
-- default ev_id and ev_txid for that). The answer is only valid until the transaction
-- ends: rotation may switch tables, but it cannot truncate a table that an open
-- transaction has written to. Disabled queues refuse, except for replicas applying
-- changes (session_replication_role = replica), like insert_event.
create or replace function pgq.current_event_table(x_queue_name text)
returns text as $$
declare
    q record;
begin
    select queue_data_pfx, queue_cur_table, queue_disable_insert into q
        from pgq.queue
        where queue_name = x_queue_name;
    if not found then
        raise exception 'Event queue not found';
    end if;
    if q.queue_disable_insert and current_setting('session_replication_role') <> 'replica' then
        raise exception 'Writing to queue disabled';
    end if;
    return q.queue_data_pfx || '_' || q.queue_cur_table;
end;
$$ language plpgsql;
