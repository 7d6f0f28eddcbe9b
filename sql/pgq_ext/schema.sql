-- pgq_ext schema: exactly-once bookkeeping for consumers that write into a database
-- other than the queue database (python-pgq RemoteConsumer/SerialConsumer).
--
-- The tracking rows live in the *target* database and are updated in the same
-- transaction as the consumer's writes there, so "work done" and "batch/tick recorded"
-- commit together. subconsumer_id ('' when unused) lets several workers of one consumer
-- track their positions independently. Everything here is idempotent.

create schema if not exists pgq_ext;

-- last batch applied per (consumer, subconsumer); batch ids come from pgq.batch_id_seq
create table if not exists pgq_ext.completed_batch (
    consumer_id     text    not null,
    subconsumer_id  text    not null default '',
    last_batch_id   bigint  not null,
    constraint completed_batch_pkey primary key (consumer_id, subconsumer_id)
);

-- last tick applied per (consumer, subconsumer), for tick-based (serial) consumers
create table if not exists pgq_ext.completed_tick (
    consumer_id     text    not null,
    subconsumer_id  text    not null default '',
    last_tick_id    bigint  not null,
    constraint completed_tick_pkey primary key (consumer_id, subconsumer_id)
);

-- events applied from the batch currently in progress (per-event tracking)
create table if not exists pgq_ext.completed_event (
    consumer_id     text    not null,
    subconsumer_id  text    not null default '',
    batch_id        bigint  not null,
    event_id        bigint  not null,
    constraint completed_event_pkey primary key (consumer_id, subconsumer_id, batch_id, event_id)
);

-- the batch whose events completed_event currently holds
create table if not exists pgq_ext.partial_batch (
    consumer_id     text    not null,
    subconsumer_id  text    not null default '',
    cur_batch_id    bigint  not null,
    constraint partial_batch_pkey primary key (consumer_id, subconsumer_id)
);
