-- pgq.maint_operations(): the maintenance work the daemon should do now.
--
-- Each row is a function to call as func_name(func_arg) (or func_name() when
-- func_arg is NULL), except func_name 'vacuum', which means VACUUM func_arg. The
-- daemon runs each in its own transaction and repeats it while it returns non-zero.
-- Rotation step2 is listed whenever a step1 is listed or a previous switch still
-- lacks its step2, and comes after the step1 rows so the daemon commits step1 first.
-- pgq_node and londiste maintenance is listed here, when installed, because nearly
-- every cascaded setup needs it (their queues need no queue_extra_maint entries).
create or replace function pgq.maint_operations(out func_name text, out func_arg text)
returns setof record as $$
declare
    v_step2 boolean;
begin
    func_name := 'pgq.maint_rotate_tables_step1';
    for func_arg in
        select queue_name
            from pgq.queue
            where queue_switch_step2 is not null
              and queue_switch_time + queue_rotation_period < now()
            order by queue_name
    loop
        v_step2 := true;
        return next;
    end loop;

    if v_step2 or exists (select 1 from pgq.queue where queue_switch_step2 is null) then
        func_name := 'pgq.maint_rotate_tables_step2';
        func_arg := null;
        return next;
    end if;

    for func_name, func_arg in
        select m.fn, q.queue_name
            from pgq.queue q
            cross join lateral unnest(q.queue_extra_maint) with ordinality as m (fn, nr)
            order by q.queue_name, m.nr
    loop
        return next;
    end loop;

    if to_regprocedure('pgq_node.maint_watermark(text)') is not null
       and to_regclass('pgq_node.node_info') is not null then
        func_name := 'pgq_node.maint_watermark';
        for func_arg in
            execute 'select queue_name from pgq_node.node_info order by queue_name'
        loop
            return next;
        end loop;
    end if;

    -- root_check_seqs has an optional second argument in some londiste versions.
    if to_regclass('pgq_node.node_info') is not null
       and exists (select 1 from pg_catalog.pg_proc p
                   join pg_catalog.pg_namespace n on n.oid = p.pronamespace
                   where n.nspname = 'londiste' and p.proname = 'root_check_seqs') then
        func_name := 'londiste.root_check_seqs';
        for func_arg in
            execute 'select queue_name from pgq_node.node_info where node_type = ''root'' order by queue_name'
        loop
            return next;
        end loop;
    end if;

    if to_regprocedure('londiste.periodic_maintenance()') is not null then
        func_name := 'londiste.periodic_maintenance';
        func_arg := null;
        return next;
    end if;

    func_name := 'vacuum';
    for func_arg in
        select pgq.maint_tables_to_vacuum()
    loop
        return next;
    end loop;
end;
$$ language plpgsql;
