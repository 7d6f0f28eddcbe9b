-- pgq.upgrade_schema(): bring a pgq schema created by an older PgQ up to 3.5 layout.
--
-- The installer runs it after schema.sql on every install, and databases that once
-- had an older PgQ may lack columns that later versions added; schema.sql's
-- "create table if not exists" does not add those. Each fix is made only when
-- needed, so a current schema is left untouched. Returns the number of fixes made.
create or replace function pgq.upgrade_schema()
returns integer as $$
declare
    v_fixes integer := 0;
    v_col record;
begin
    -- Columns added to pgq.queue after 3.0, with their 3.5 definitions.
    for v_col in
        select c.name, c.def
            from (values
                ('queue_disable_insert', 'boolean not null default false'),
                ('queue_ticker_paused', 'boolean not null default false'),
                ('queue_per_tx_limit', 'integer'),
                ('queue_extra_maint', 'text[]')
            ) as c (name, def)
            where not exists (select 1 from pg_catalog.pg_attribute a
                              where a.attrelid = 'pgq.queue'::regclass
                                and a.attname = c.name
                                and not a.attisdropped)
    loop
        execute format('alter table pgq.queue add column %I ', v_col.name) || v_col.def;
        v_fixes := v_fixes + 1;
    end loop;

    -- Subscriptions without a position (pgq_coop subconsumers) need a nullable
    -- sub_last_tick; retry rows have no txid until they are re-inserted.
    if exists (select 1 from pg_catalog.pg_attribute
               where attrelid = 'pgq.subscription'::regclass and attname = 'sub_last_tick'
                 and attnotnull) then
        alter table pgq.subscription alter column sub_last_tick drop not null;
        v_fixes := v_fixes + 1;
    end if;
    if exists (select 1 from pg_catalog.pg_attribute
               where attrelid = 'pgq.retry_queue'::regclass and attname = 'ev_txid'
                 and attnotnull) then
        alter table pgq.retry_queue alter column ev_txid drop not null;
        v_fixes := v_fixes + 1;
    end if;
    return v_fixes;
end;
$$ language plpgsql;
