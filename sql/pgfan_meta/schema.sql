-- pgfan_meta: what `pgfan install` has put into this database, and from which SQL.
--
-- One row per component (pgq, pgq_ext, ...). The checksum is the md5 of the component's
-- SQL text as embedded in the binary that installed it: an equal checksum means there is
-- nothing to do, a different one means the component is re-applied (all of its files are
-- idempotent), which is how upgrades happen.
create schema if not exists pgfan_meta;

create table if not exists pgfan_meta.component (
    name            text        primary key,
    version         text        not null,
    checksum        text        not null,
    installed_at    timestamptz not null default now()
);
