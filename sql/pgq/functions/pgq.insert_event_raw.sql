-- pgq.insert_event_raw(queue, ev_id, ev_time, ev_owner, ev_retry, type, data, extra1..4):
-- append one event to the queue's current event table.
--
-- This is the single write path for events (insert_event, the retry mover and cascading
-- all end here), and the hottest function of the core. The obvious PL/pgSQL form, an
-- EXECUTE of an INSERT into the table named by the queue row, re-parses and re-plans that
-- INSERT on every call and so costs over twice the C extension. Instead the function is
-- generated: pgq._pgfan_build_insert_event_raw() writes one static INSERT per queue and
-- event table, which PL/pgSQL plans once per session, behind a binary search on queue_id.
-- The same text also becomes the 7-argument pgq.insert_event (defined in
-- pgq.insert_event.sql only until the first build).
-- create_queue and drop_queue rebuild it (replacing the functions only when the generated
-- text changed, so a queue past the first 256 costs no replacement). Anything unusual (a disabled queue, a per-tx
-- limit, a queue the build did not cover) takes pgq._pgfan_insert_event_general(), the
-- plain dynamic form.
--
-- The generated function runs inside SECURITY DEFINER callers (insert_event) with the
-- caller's search_path, because pinning search_path costs a GUC save and restore per call:
-- so every name and operator in it is schema-qualified.
--
-- Low-latency queues (ticker_max_lag 0, the setting that asks for a tick as soon as there
-- are new events; pgfan's own queues have it) also NOTIFY pgfan_ticker_wake with the queue
-- name. The notification is delivered when the producer's transaction commits, which is the
-- moment its events become visible to a tick, so pgfan's ticker ticks then instead of at
-- its next sequence poll, and ticks the queue even when a poll tick taken while the
-- transaction was open already counted its events (PgQ would call the queue idle and back
-- off). The server merges equal notifications of one transaction, so 100 events into one
-- queue cost one NOTIFY at commit plus a cheap duplicate check per call. The generated
-- function has the NOTIFY in those queues' branches only (other queues pay nothing), so
-- set_queue_config rebuilds it when a queue's ticker_max_lag, ticker_paused or
-- external_ticker changes; the general path reads the settings at each call. The PgQ
-- extension cannot do this: with it the ticker's poll alone notices new events.
--
-- Both paths keep PgQ's details: the event sequence advances even when ev_id is given (the
-- ticker measures "new events" by it, so retried events must move it too), a refused event
-- still uses an id, ev_txid comes from the table default, and queue_per_tx_limit is counted
-- in a transaction-local setting, so the count vanishes at commit or rollback and also
-- drops events of rolled-back savepoints.
create or replace function pgq._pgfan_insert_event_general(
    queue_name text, ev_id bigint, ev_time timestamptz, ev_owner integer, ev_retry integer,
    ev_type text, ev_data text, ev_extra1 text, ev_extra2 text, ev_extra3 text, ev_extra4 text)
returns bigint as $$
declare
    q record;
    v_count integer;
    v_id bigint;
begin
    if queue_name is null then
        raise exception 'Queue name must not be NULL' using errcode = 'internal_error';
    end if;
    select t.queue_id, t.queue_data_pfx, t.queue_cur_table, t.queue_event_seq,
           t.queue_disable_insert, t.queue_per_tx_limit,
           (t.queue_ticker_max_lag = '0' and not t.queue_ticker_paused
            and not t.queue_external_ticker) as wake
        into q
        from pgq.queue t
        where t.queue_name = _pgfan_insert_event_general.queue_name;
    if not found then
        raise exception 'No such queue' using errcode = 'internal_error';
    end if;
    v_id := nextval(q.queue_event_seq::regclass);
    if q.queue_disable_insert and current_setting('session_replication_role') <> 'replica' then
        raise exception 'Insert into queue disallowed' using errcode = 'internal_error';
    end if;
    if q.queue_per_tx_limit is not null then
        v_count := coalesce(nullif(current_setting('pgq_tx_limit.q' || q.queue_id, true), ''), '0')::integer;
        if v_count >= q.queue_per_tx_limit then
            raise exception 'Queue ''%'' allows max % events from one TX', queue_name, q.queue_per_tx_limit
                using errcode = 'internal_error';
        end if;
        perform set_config('pgq_tx_limit.q' || q.queue_id, (v_count + 1)::text, true);
    end if;
    if q.wake then
        perform pg_notify('pgfan_ticker_wake', queue_name);
    end if;
    if _pgfan_insert_event_general.ev_id is not null then
        v_id := _pgfan_insert_event_general.ev_id;
    end if;
    execute 'insert into ' || pgq.quote_fqname(q.queue_data_pfx || '_' || q.queue_cur_table)
        || ' (ev_id, ev_time, ev_owner, ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4)'
        || ' values ($1, coalesce($2, now()), $3, $4, $5, $6, $7, $8, $9, $10)'
        using v_id, ev_time, ev_owner, ev_retry, ev_type, ev_data,
              ev_extra1, ev_extra2, ev_extra3, ev_extra4;
    return v_id;
end;
$$ language plpgsql
set search_path = pg_catalog, pgq, pg_temp;

-- The dispatch over queue ids lo..hi (1-based positions in the sorted arrays): a chain of
-- equality tests for a few queues, otherwise a split on the middle id, so a call makes
-- about log2(queues) comparisons.
create or replace function pgq._pgfan_insert_event_dispatch(
    ids integer[], branches text[], lo integer, hi integer)
returns text as $$
declare
    v_mid integer;
    v_out text := '';
    v_i integer;
begin
    if hi - lo < 4 then
        for v_i in lo .. hi loop
            v_out := v_out || case when v_i = lo then 'if' else 'elsif' end
                || ' v_qid operator(pg_catalog.=) ' || ids[v_i] || ' then' || chr(10)
                || branches[v_i];
        end loop;
        return v_out || 'end if;' || chr(10);
    end if;
    v_mid := (lo + hi + 1) / 2;
    return 'if v_qid operator(pg_catalog.<) ' || ids[v_mid] || ' then' || chr(10)
        || pgq._pgfan_insert_event_dispatch(ids, branches, lo, v_mid - 1)
        || 'else' || chr(10)
        || pgq._pgfan_insert_event_dispatch(ids, branches, v_mid, hi)
        || 'end if;' || chr(10);
end;
$$ language plpgsql immutable
set search_path = pg_catalog, pgq, pg_temp;

-- Writes pgq.insert_event_raw and the 7-argument pgq.insert_event (the producers' entry,
-- generated from the same text so a producer's call is one PL/pgSQL call, not two) for the
-- queues that exist now. At most 256 queues (by id) get static INSERTs, which bounds the
-- functions' size and their per-session memory; the rest use the general path.
create or replace function pgq._pgfan_build_insert_event_raw()
returns void as $$
declare
    q record;
    w record;
    v_ids integer[] := '{}';
    v_branches text[] := '{}';
    v_branch text;
    v_nr integer;
    v_src text;
begin
    -- Serialises builders (create_queue already holds this lock) so two never replace the
    -- functions at once; nothing on the insert path locks the template table.
    lock table pgq.event_template in share update exclusive mode;
    for q in
        select queue_id, queue_ntables, queue_event_seq,
               queue_ticker_max_lag = '0' and not queue_ticker_paused
                 and not queue_external_ticker as wake
          from pgq.queue
         where queue_data_pfx = 'pgq.event_' || queue_id
           and queue_event_seq = queue_data_pfx || '_id_seq'
         order by queue_id
         limit 256
    loop
        -- The wake-up is compiled into the branches of low-latency queues only, so the other
        -- queues' inserts do not even test for it (a test of the queue row's settings cost
        -- 0.7 microseconds an event); set_queue_config rebuilds when those settings change.
        -- An assignment rather than a PERFORM: PL/pgSQL evaluates it as a simple
        -- expression, without a statement of its own.
        v_branch := case when q.wake then
            '    v_woke := pg_catalog.pg_notify(''pgfan_ticker_wake'', queue_name)::pg_catalog.text;'
            || chr(10) else '' end;
        for v_nr in 0 .. q.queue_ntables - 1 loop
            -- %1$s..%4$s stand for the writer's ev_id, ev_time, ev_owner and ev_retry.
            v_branch := v_branch || format(
                '%s v_tbl operator(pg_catalog.=) %s then
    v_id := pg_catalog.nextval(%L::pg_catalog.regclass);
    insert into pgq.%I (ev_id, ev_time, ev_owner, ev_retry, ev_type, ev_data,
                        ev_extra1, ev_extra2, ev_extra3, ev_extra4)
        values (coalesce(%%1$s, v_id), %%2$s, %%3$s, %%4$s, ev_type, ev_data,
                ev_extra1, ev_extra2, ev_extra3, ev_extra4);
    return coalesce(%%1$s, v_id);
', case when v_nr = 0 then 'if' else 'elsif' end, v_nr, q.queue_event_seq,
                'event_' || q.queue_id || '_' || v_nr);
        end loop;
        v_ids := v_ids || q.queue_id;
        v_branches := v_branches || (v_branch || 'end if;' || chr(10));
    end loop;
    for w in
        select * from (values
            ('pgq.insert_event_raw(queue_name text, ev_id bigint, ev_time timestamptz, ev_owner integer,'
             ' ev_retry integer, ev_type text, ev_data text, ev_extra1 text, ev_extra2 text,'
             ' ev_extra3 text, ev_extra4 text)',
             'pgq.insert_event_raw(text, bigint, timestamptz, integer, integer, text, text, text,'
             ' text, text, text)',
             'insert_event_raw.ev_id', 'coalesce(insert_event_raw.ev_time, pg_catalog.now())',
             'insert_event_raw.ev_owner', 'insert_event_raw.ev_retry', false),
            ('pgq.insert_event(queue_name text, ev_type text, ev_data text, ev_extra1 text,'
             ' ev_extra2 text, ev_extra3 text, ev_extra4 text)',
             'pgq.insert_event(text, text, text, text, text, text, text)',
             'null::bigint', 'pg_catalog.now()', 'null::integer', 'null::integer', true)
        ) as t (header, signature, ev_id, ev_time, ev_owner, ev_retry, definer)
    loop
        v_src := format($f$
-- Generated by pgq._pgfan_build_insert_event_raw(); see sql/pgq/functions/pgq.insert_event_raw.sql.
#variable_conflict use_variable
declare
    v_qid integer;
    v_tbl integer;
    v_off boolean;
    v_limit integer;
    v_woke text;
    v_id bigint;
begin
    select t.queue_id, t.queue_cur_table, t.queue_disable_insert, t.queue_per_tx_limit
      into v_qid, v_tbl, v_off, v_limit
      from pgq.queue t
     where t.queue_name operator(pg_catalog.=) queue_name;
    if found and not v_off and v_limit is null then
%s
    end if;
    return pgq._pgfan_insert_event_general(queue_name, %s, %s, %s, %s,
        ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4);
end;
$f$,
            case when cardinality(v_ids) > 0 then
                format(pgq._pgfan_insert_event_dispatch(v_ids, v_branches, 1, cardinality(v_ids)),
                       w.ev_id, w.ev_time, w.ev_owner, w.ev_retry)
            else '' end,
            w.ev_id, w.ev_time, w.ev_owner, w.ev_retry);
        -- Replacing a function this size costs about 40 ms (its body is parsed and checked);
        -- generating the text costs a fraction of that. A queue past the first 256, or one
        -- whose change does not touch the covered queues' branches, leaves the text as it
        -- was: then there is nothing to replace, and create_queue stays cheap however many
        -- queues exist.
        if not exists (
            select 1 from pg_catalog.pg_proc p
             where p.oid = pg_catalog.to_regprocedure(w.signature)
               and p.prosrc = v_src and p.prosecdef = w.definer and p.proconfig is null
               and p.prolang = (select oid from pg_catalog.pg_language where lanname = 'plpgsql')) then
            execute format('create or replace function %s returns bigint as %L language plpgsql %s',
                           w.header, v_src,
                           case when w.definer then 'security definer' else '' end);
        end if;
    end loop;
end;
$$ language plpgsql
set search_path = pg_catalog, pgq, pg_temp;

select pgq._pgfan_build_insert_event_raw();
