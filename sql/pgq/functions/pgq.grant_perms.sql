-- pgq.grant_perms(queue): privileges on a queue's event tables and sequences.
--
-- Event tables get whatever is granted on pgq.event_template plus the standard role
-- grants (pgq_reader reads events, pgq_admin also writes and truncates them for
-- rotation and cascading). Roles that do not exist are skipped: a database owner
-- without CREATEROLE may have installed the core without them. The sequences are
-- readable by everyone because get_queue_info and the ticker read them.
create or replace function pgq.grant_perms(x_queue_name text)
returns integer as $$
declare
    q record;
    v_pos integer;
    v_schema text;
    v_table text;
    v_nr integer;
    v_reader boolean;
    v_admin boolean;
begin
    select queue_data_pfx, queue_ntables, queue_event_seq, queue_tick_seq into q
        from pgq.queue
        where queue_name = x_queue_name;
    if not found then
        raise exception 'Queue not found';
    end if;
    v_reader := exists (select 1 from pg_catalog.pg_roles where rolname = 'pgq_reader');
    v_admin := exists (select 1 from pg_catalog.pg_roles where rolname = 'pgq_admin');

    v_pos := strpos(q.queue_data_pfx, '.');
    v_schema := substr(q.queue_data_pfx, 1, v_pos - 1);
    -- Index -1 is the parent table, the others its children.
    for v_nr in -1 .. q.queue_ntables - 1 loop
        v_table := substr(q.queue_data_pfx, v_pos + 1) || case when v_nr >= 0 then '_' || v_nr else '' end;
        perform pgq._grant_perms_from('pgq', 'event_template', v_schema, v_table);
        if v_reader then
            execute format('grant select on %I.%I to pgq_reader', v_schema, v_table);
        end if;
        if v_admin then
            execute format('grant select, insert, truncate on %I.%I to pgq_admin', v_schema, v_table);
        end if;
    end loop;

    execute 'grant select on ' || pgq.quote_fqname(q.queue_event_seq) || ' to public';
    execute 'grant select on ' || pgq.quote_fqname(q.queue_tick_seq) || ' to public';
    if v_admin then
        execute 'grant usage on ' || pgq.quote_fqname(q.queue_event_seq) || ' to pgq_admin';
    end if;
    return 1;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
