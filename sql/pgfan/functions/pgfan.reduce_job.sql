-- pgfan.reduce_job(job_id): run the job's reduce over its done tasks' rows.
--
-- The rows of every done task form the relation `partials`, a CTE whose columns have the
-- names and types the node reported (types resolved through to_regtype/format_type, so
-- only catalog output reaches the SQL text); the reduce runs in a subquery, where it sees
-- `partials` and may have a WITH clause of its own. A CTE, not a temporary table: creating
-- and dropping a table per job cost more than all the rest of finishing it (catalog rows
-- and invalidations; measured with pg_stat_statements in the delivery benchmark). The
-- reduce's rows are stored in pgfan.job_result_row as jsonb, keeping numbers numbers.
-- Tasks that disagree on their columns (run_parallel of different statements) still give
-- the plain concatenation: each row as {"task", "node", "row"}, the row under its own
-- task's columns, so no row is lost; a reduce of its own raises then, as when it fails,
-- and pgfan.complete_job records that (the rows stay readable through pgfan.partials). The search_path is deliberately the caller's: the reduce SQL is the
-- user's and may name the user's tables unqualified; everything of pgfan's own is
-- schema-qualified.
--
-- The plain concatenation of columns of the common scalar types (pgfan.concat_kinds)
-- takes a static statement instead (pgfan.concat_row): the same casts, so the same jsonb,
-- without parsing and planning a dynamic one per job, which was two thirds of the cost of
-- reducing a one-task job (pg_stat_statements, 5000 single-row copy jobs).
create or replace function pgfan.reduce_job(i_job_id bigint)
returns integer as $$
declare
    v_reduce text;
    v_cols text[];
    v_types text[];
    v_shapes integer;
    v_casts text;
    v_kinds text[];
    v_n integer;
begin
    select reduce into v_reduce from pgfan.job where job_id = i_job_id;
    select count(distinct (result_columns, result_types)), min(result_columns), min(result_types)
      into v_shapes, v_cols, v_types
      from pgfan.task where job_id = i_job_id and state = 'done';
    delete from pgfan.job_result_row where job_id = i_job_id;
    if v_shapes > 1 and lower(btrim(coalesce(v_reduce, 'concat'))) in ('concat', '') then
        insert into pgfan.job_result_row (job_id, row_no, row_data)
        select i_job_id, row_number() over (order by t.task_id, r.row_no),
               jsonb_build_object('task', t.task_id, 'node', t.node_name,
                                  'row', pgfan.concat_row(t.result_columns,
                                                          pgfan.concat_kinds(t.result_types),
                                                          r.vals))
          from pgfan.task_row r join pgfan.task t using (task_id)
         where t.job_id = i_job_id and t.state = 'done';
        get diagnostics v_n = row_count;
        return v_n;
    elsif v_shapes > 1 then
        raise exception 'pgfan: the tasks of job % returned different columns, which its reduce cannot take',
            i_job_id
            using hint = format('read them with pgfan.partials(%s)', i_job_id);
    end if;
    if v_shapes = 0 or coalesce(cardinality(v_cols), 0) = 0 then
        return 0;
    end if;
    if lower(btrim(coalesce(v_reduce, 'concat'))) in ('concat', '') then
        v_kinds := pgfan.concat_kinds(v_types);
        if array_position(v_kinds, null) is null then
            insert into pgfan.job_result_row (job_id, row_no, row_data)
            select i_job_id, row_number() over (order by t.task_id, r.row_no),
                   pgfan.concat_row(v_cols, v_kinds, r.vals)
              from pgfan.task_row r join pgfan.task t using (task_id)
             where t.job_id = i_job_id and t.state = 'done';
            get diagnostics v_n = row_count;
            return v_n;
        end if;
    end if;
    select string_agg(format('r.vals[%s]::%s as %I', o, format_type(to_regtype(t), null), c),
                      ', ' order by o)
      into v_casts
      from unnest(v_cols, v_types) with ordinality u(c, t, o);
    if v_casts is null or exists (select 1 from unnest(v_types) t where to_regtype(t) is null) then
        raise exception 'pgfan: job % has a result type unknown on the master: %',
            i_job_id, array_to_string(v_types, ', ');
    end if;
    execute format('with partials as materialized (
                        select %s from pgfan.task_row r join pgfan.task t using (task_id)
                         where t.job_id = $1 and t.state = ''done'' order by t.task_id, r.row_no)
                    insert into pgfan.job_result_row (job_id, row_no, row_data)
                    select $1, row_number() over (), to_jsonb(q) from (%s) q',
                   v_casts, pgfan.reduce_sql(v_reduce, v_cols))
        using i_job_id;
    get diagnostics v_n = row_count;
    return v_n;
end;
$$ language plpgsql;
