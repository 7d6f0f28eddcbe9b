-- pgq_ext.upgrade_schema(): bring tables created by old pgq_ext versions (before
-- subconsumer support) to the current layout: add subconsumer_id and widen the primary
-- key to include it. Returns the number of tables changed; 0 on a current schema, so
-- it is safe to run on every install.

create or replace function pgq_ext.upgrade_schema()
returns integer as $$
declare
    _tbl    text;
    _pkey   text;
    _cols   text;
    _cnt    integer := 0;
begin
    for _tbl, _cols in
        select v.t, v.c
          from (values ('completed_batch', 'consumer_id, subconsumer_id'),
                       ('completed_tick', 'consumer_id, subconsumer_id'),
                       ('completed_event', 'consumer_id, subconsumer_id, batch_id, event_id'),
                       ('partial_batch', 'consumer_id, subconsumer_id')) v(t, c)
    loop
        if to_regclass('pgq_ext.' || quote_ident(_tbl)) is null then
            continue;
        end if;
        perform 1
           from pg_catalog.pg_attribute a
          where a.attrelid = ('pgq_ext.' || quote_ident(_tbl))::regclass
            and a.attname = 'subconsumer_id'
            and not a.attisdropped;
        if found then
            continue;
        end if;

        execute format('alter table pgq_ext.%I add column subconsumer_id text not null default %L',
                       _tbl, '');
        select c.conname into _pkey
          from pg_catalog.pg_constraint c
         where c.conrelid = ('pgq_ext.' || quote_ident(_tbl))::regclass
           and c.contype = 'p';
        if found then
            execute format('alter table pgq_ext.%I drop constraint %I', _tbl, _pkey);
        end if;
        execute format('alter table pgq_ext.%I add constraint %I primary key (%s)',
                       _tbl, _tbl || '_pkey', _cols);
        _cnt := _cnt + 1;
    end loop;
    return _cnt;
end;
$$ language plpgsql;
