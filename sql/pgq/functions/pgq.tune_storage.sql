-- pgq.tune_storage(queue): storage options for a queue's event tables.
--
-- Event tables are only ever appended to and then truncated by rotation, so pages can
-- be packed full and (auto)vacuum has nothing to reclaim. Returns 0 for an unknown
-- queue, 1 otherwise.
create or replace function pgq.tune_storage(i_queue_name text)
returns integer as $$
declare
    v_pfx text;
    v_ntables integer;
    v_nr integer;
begin
    select q.queue_data_pfx, q.queue_ntables into v_pfx, v_ntables
        from pgq.queue q
        where q.queue_name = i_queue_name;
    if not found then
        return 0;
    end if;
    for v_nr in 0 .. v_ntables - 1 loop
        execute 'alter table ' || pgq.quote_fqname(v_pfx || '_' || v_nr)
            || ' set (fillfactor = 100, autovacuum_enabled = off, toast.autovacuum_enabled = off)';
    end loop;
    return 1;
end;
$$ language plpgsql strict;
