-- pgfan_node.empty_result(state, error): the result of a task that returned no rows.
--
-- The shape of a result event's data (docs/pipeline.md): state, error, columns, types, rows.
create or replace function pgfan_node.empty_result(i_state text, i_error text)
returns jsonb as $$
    select jsonb_build_object('state', i_state, 'error', i_error,
                              'columns', '[]'::jsonb, 'types', '[]'::jsonb, 'rows', '[]'::jsonb);
$$ language sql immutable
set search_path = pg_catalog, pg_temp;
