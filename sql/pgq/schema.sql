-- pgq schema: roles, tables and sequences of the PgQ 3.5-compatible queue core.
--
-- Layout, column names, defaults and constraint names match PgQ 3.5 so that existing
-- clients (pgqd, python-pgq, londiste, pgq_coop) that read these tables directly keep
-- working. Everything here is idempotent: pgfan install runs it on every upgrade.

-- The three roles are cluster-wide. A database owner without CREATEROLE cannot make
-- them; the core still works then, only the role-based grants are skipped.
do $roles$
declare
    r text;
begin
    foreach r in array array['pgq_reader', 'pgq_writer', 'pgq_admin'] loop
        if not exists (select 1 from pg_catalog.pg_roles where rolname = r) then
            begin
                execute format('create role %I nologin', r);
            exception
                when insufficient_privilege then
                    raise notice 'pgq: cannot create role %, grants to it are skipped', r;
                when unique_violation or duplicate_object then
                    null; -- another database of this cluster created it concurrently
            end;
        end if;
    end loop;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgq_admin')
       and not pg_catalog.pg_has_role('pgq_admin', 'pgq_reader', 'member') then
        begin
            grant pgq_reader, pgq_writer to pgq_admin;
        exception
            when insufficient_privilege then
                raise notice 'pgq: cannot make pgq_admin a member of pgq_reader/pgq_writer';
            when unique_violation then
                null; -- an install in another database of this cluster granted it concurrently
        end;
    end if;
end
$roles$;

create schema if not exists pgq;

create table if not exists pgq.consumer (
    co_id       serial,
    co_name     text        not null,
    constraint consumer_pkey primary key (co_id),
    constraint consumer_name_uq unique (co_name)
);

create table if not exists pgq.queue (
    queue_id                    serial,
    queue_name                  text        not null,
    queue_ntables               integer     not null default 3,
    queue_cur_table             integer     not null default 0,
    queue_rotation_period       interval    not null default '2 hours',
    queue_switch_step1          bigint      not null default txid_current(),
    queue_switch_step2          bigint               default txid_current(),
    queue_switch_time           timestamptz not null default now(),
    queue_external_ticker       boolean     not null default false,
    queue_disable_insert        boolean     not null default false,
    queue_ticker_paused         boolean     not null default false,
    queue_ticker_max_count      integer     not null default 500,
    queue_ticker_max_lag        interval    not null default '3 seconds',
    queue_ticker_idle_period    interval    not null default '1 minute',
    queue_per_tx_limit          integer,
    queue_data_pfx              text        not null,
    queue_event_seq             text        not null,
    queue_tick_seq              text        not null,
    queue_extra_maint           text[],
    constraint queue_pkey primary key (queue_id),
    constraint queue_name_uq unique (queue_name)
);

create table if not exists pgq.tick (
    tick_queue                  int4            not null,
    tick_id                     bigint          not null,
    tick_time                   timestamptz     not null default now(),
    tick_snapshot               txid_snapshot   not null default txid_current_snapshot(),
    tick_event_seq              bigint          not null,
    constraint tick_pkey primary key (tick_queue, tick_id),
    constraint tick_queue_fkey foreign key (tick_queue) references pgq.queue (queue_id)
);

create sequence if not exists pgq.batch_id_seq;

create table if not exists pgq.subscription (
    sub_id          serial      not null,
    sub_queue       int4        not null,
    sub_consumer    int4        not null,
    sub_last_tick   bigint,
    sub_active      timestamptz not null default now(),
    sub_batch       bigint,
    sub_next_tick   bigint,
    constraint subscription_pkey primary key (sub_queue, sub_consumer),
    constraint subscription_batch_idx unique (sub_batch),
    constraint sub_queue_fkey foreign key (sub_queue) references pgq.queue (queue_id),
    constraint sub_consumer_fkey foreign key (sub_consumer) references pgq.consumer (co_id)
);

-- Every queue's event tables inherit this one; it never holds rows itself.
create table if not exists pgq.event_template (
    ev_id       bigint      not null,
    ev_time     timestamptz not null,
    ev_txid     bigint      not null default txid_current(),
    ev_owner    int4,
    ev_retry    int4,
    ev_type     text,
    ev_data     text,
    ev_extra1   text,
    ev_extra2   text,
    ev_extra3   text,
    ev_extra4   text
);

-- Events waiting for a retry; ev_owner is the sub_id of the consumer that retried them.
create table if not exists pgq.retry_queue (
    ev_retry_after  timestamptz not null,
    ev_queue        int4        not null,
    like pgq.event_template,
    constraint rq_pkey primary key (ev_owner, ev_id),
    constraint rq_queue_id_fkey foreign key (ev_queue) references pgq.queue (queue_id)
);
alter table pgq.retry_queue alter column ev_owner set not null;
alter table pgq.retry_queue alter column ev_txid drop not null;
create index if not exists rq_retry_idx on pgq.retry_queue (ev_retry_after);
