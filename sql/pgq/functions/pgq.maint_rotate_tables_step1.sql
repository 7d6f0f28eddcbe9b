-- pgq.maint_rotate_tables_step1(queue): switch inserts to the next event table.
--
-- Events are never deleted row by row; instead the oldest child table is truncated
-- and becomes the current one. That is only safe once no consumer can still need
-- its rows: the previous switch must be complete (step2 recorded) and every
-- consumer's position must lie after it (last tick xmin > switch_step2). A dead
-- consumer therefore stops rotation until it is unregistered. The table is locked
-- NOWAIT so that a reader (pg_dump, a long batch) only postpones rotation to the next
-- maintenance run. Ticks older than the previous switch are no longer usable as
-- batch boundaries and are deleted, but never one a subscription still starts from.
-- Returns 0 (the maintenance loop repeats an operation while it returns non-zero).
create or replace function pgq.maint_rotate_tables_step1(i_queue_name text)
returns integer as $$
declare
    q record;
    v_next integer;
    v_table text;
    v_min_tick bigint;
begin
    select queue_id, queue_data_pfx, queue_ntables, queue_cur_table, queue_switch_step2 into q
        from pgq.queue
        where queue_name = i_queue_name
          and queue_switch_step2 is not null
          and queue_switch_time + queue_rotation_period < now()
        for update;
    if not found then
        return 0;
    end if;

    if exists (select 1
                   from pgq.subscription s
                   join pgq.tick t on t.tick_queue = s.sub_queue and t.tick_id = s.sub_last_tick
                   where s.sub_queue = q.queue_id
                     and txid_snapshot_xmin(t.tick_snapshot) <= q.queue_switch_step2) then
        return 0;
    end if;

    v_next := (q.queue_cur_table + 1) % q.queue_ntables;
    v_table := pgq.quote_fqname(q.queue_data_pfx || '_' || v_next);
    begin
        execute 'lock table ' || v_table || ' nowait';
    exception
        when lock_not_available then
            return 0;
    end;
    execute 'truncate ' || v_table;

    update pgq.queue
        set queue_cur_table = v_next,
            queue_switch_time = now(),
            queue_switch_step1 = txid_current(),
            queue_switch_step2 = null
        where queue_id = q.queue_id;

    select min(sub_last_tick) into v_min_tick
        from pgq.subscription
        where sub_queue = q.queue_id;
    delete from pgq.tick
        where tick_queue = q.queue_id
          and txid_snapshot_xmin(tick_snapshot) < q.queue_switch_step2
          and (v_min_tick is null or tick_id < v_min_tick);
    return 0;
end;
$$ language plpgsql;
