-- pgq.create_queue(queue): create a queue; 0 if it already exists, 1 if created.
--
-- Each queue gets its own event and tick sequences, a parent table pgq.event_<id>
-- (inheriting pgq.event_template, so one query can read all of a queue's events)
-- and queue_ntables children that rotation cycles through. Tables are named by
-- queue id, not name, so any queue name is safe. The children need ev_id and ev_txid
-- defaults for producers that COPY into current_event_table(). The first tick is made
-- right away: consumers register at the latest tick and need one to exist. insert_event_raw
-- is rebuilt so that the new queue gets its static INSERTs.
create or replace function pgq.create_queue(i_queue_name text)
returns integer as $$
declare
    v_id integer;
    v_pfx text;
    v_seq text;
    v_ntables integer;
    v_nr integer;
    v_table text;
begin
    if i_queue_name is null then
        raise exception 'Invalid NULL value';
    end if;
    if exists (select 1 from pgq.queue where queue_name = i_queue_name) then
        return 0;
    end if;

    v_id := nextval(pg_get_serial_sequence('pgq.queue', 'queue_id')::regclass);
    v_pfx := 'pgq.event_' || v_id;
    v_seq := v_pfx || '_id_seq';
    insert into pgq.queue (queue_id, queue_name, queue_data_pfx, queue_event_seq, queue_tick_seq)
        values (v_id, i_queue_name, v_pfx, v_seq, v_pfx || '_tick_seq')
        returning queue_ntables into v_ntables;

    execute format('create sequence pgq.%I', 'event_' || v_id || '_id_seq');
    execute format('create sequence pgq.%I', 'event_' || v_id || '_tick_seq');
    execute format('create table pgq.%I () inherits (pgq.event_template)', 'event_' || v_id);
    for v_nr in 0 .. v_ntables - 1 loop
        v_table := 'event_' || v_id || '_' || v_nr;
        execute format('create table pgq.%I () inherits (pgq.%I)', v_table, 'event_' || v_id);
        execute format('alter table pgq.%I alter column ev_id set default nextval(%L)', v_table, v_seq);
        execute format('create index %I on pgq.%I (ev_txid)', v_table || '_txid_idx', v_table);
    end loop;

    perform pgq.tune_storage(i_queue_name);
    perform pgq.grant_perms(i_queue_name);
    perform pgq._pgfan_build_insert_event_raw();
    perform pgq.ticker(i_queue_name);
    return 1;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
