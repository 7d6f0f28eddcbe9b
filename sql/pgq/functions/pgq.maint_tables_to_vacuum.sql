-- pgq.maint_tables_to_vacuum(): small, busy tables the daemon should vacuum itself.
--
-- The queue bookkeeping tables are updated on every tick and batch; without
-- autovacuum they bloat quickly. With autovacuum on nothing is returned. Event tables
-- are never listed: rotation truncates them. Tables of optional schemas (pgq_ext,
-- pgq_node, londiste) are listed only if present.
create or replace function pgq.maint_tables_to_vacuum()
returns setof text as $$
begin
    if current_setting('autovacuum') = 'on' then
        return;
    end if;
    return query
        select t.name
            from unnest(array[
                'pgq.subscription', 'pgq.consumer', 'pgq.queue', 'pgq.tick', 'pgq.retry_queue',
                'pgq_ext.completed_tick', 'pgq_ext.completed_batch', 'pgq_ext.completed_event',
                'pgq_ext.partial_batch', 'pgq_node.local_state', 'londiste.completed'
            ]) with ordinality as t (name, nr)
            where to_regclass(t.name) is not null
            order by t.nr;
end;
$$ language plpgsql;
