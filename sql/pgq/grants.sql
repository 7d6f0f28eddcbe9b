-- pgq grants: PgQ's three-role model.
--
--   public      info functions and read access to the metadata tables
--   pgq_reader  consuming: register, next_batch, events, retry, finish
--   pgq_writer  producing: insert_event, current_event_table, the change-capture triggers
--   pgq_admin   ticker, maintenance, queue administration (and is a member of the other two)
--
-- Functions are granted by name from one list, so overloads and functions added later are
-- covered; anything not listed stays executable by the owner only.
revoke all on all functions in schema pgq from public;
grant usage on schema pgq to public;

do $grants$
declare
    f record;
begin
    for f in
        select p.oid::regprocedure as sig, g.grantee
          from pg_catalog.pg_proc p
          join pg_catalog.pg_namespace n on n.oid = p.pronamespace and n.nspname = 'pgq'
          join (values
                ('get_consumer_info', 'public'), ('get_queue_info', 'public'),
                ('quote_fqname', 'public'), ('seq_getval', 'public'), ('version', 'public'),
                ('batch_event_sql', 'pgq_reader'), ('batch_event_tables', 'pgq_reader'),
                ('batch_retry', 'pgq_reader'), ('event_retry', 'pgq_reader'),
                ('find_tick_helper', 'pgq_reader'), ('finish_batch', 'pgq_reader'),
                ('force_tick', 'pgq_reader'), ('get_batch_cursor', 'pgq_reader'),
                ('get_batch_events', 'pgq_reader'), ('get_batch_info', 'pgq_reader'),
                ('next_batch', 'pgq_reader'), ('next_batch_custom', 'pgq_reader'),
                ('next_batch_info', 'pgq_reader'), ('register_consumer', 'pgq_reader'),
                ('register_consumer_at', 'pgq_reader'), ('unregister_consumer', 'pgq_reader'),
                ('current_event_table', 'pgq_writer'), ('insert_event', 'pgq_writer'),
                ('jsontriga', 'pgq_writer'), ('logutriga', 'pgq_writer'), ('sqltriga', 'pgq_writer'),
                ('_grant_perms_from', 'pgq_admin'), ('create_queue', 'pgq_admin'),
                ('drop_queue', 'pgq_admin'), ('event_retry_raw', 'pgq_admin'),
                ('grant_perms', 'pgq_admin'), ('insert_event_raw', 'pgq_admin'),
                ('maint_operations', 'pgq_admin'), ('maint_retry_events', 'pgq_admin'),
                ('maint_rotate_tables_step1', 'pgq_admin'), ('maint_rotate_tables_step2', 'pgq_admin'),
                ('maint_tables_to_vacuum', 'pgq_admin'), ('seq_setval', 'pgq_admin'),
                ('set_queue_config', 'pgq_admin'), ('ticker', 'pgq_admin'),
                ('tune_storage', 'pgq_admin'), ('upgrade_schema', 'pgq_admin')
               ) as g (proname, grantee) on g.proname = p.proname
    loop
        execute format('grant execute on function %s to %s', f.sig,
                       case when f.grantee = 'public' then 'public' else quote_ident(f.grantee) end);
    end loop;
end
$grants$;

grant select on pgq.consumer, pgq.queue, pgq.tick, pgq.subscription to public;
grant select on pgq.consumer, pgq.queue, pgq.tick, pgq.subscription, pgq.event_template to pgq_reader;
grant select, insert, update, delete on pgq.consumer, pgq.queue, pgq.tick, pgq.subscription, pgq.retry_queue to pgq_admin;
grant select, insert, truncate on pgq.event_template to pgq_admin;
