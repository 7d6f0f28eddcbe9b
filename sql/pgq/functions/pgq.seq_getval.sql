-- pgq.seq_getval(seq): last_value of a sequence given by (dotted) name.
--
-- last_value is read directly rather than via pg_sequence_last_value(), which is NULL
-- for a never-used sequence; PgQ records 1 there (a new queue's first tick_event_seq).
create or replace function pgq.seq_getval(i_seq_name text)
returns bigint as $$
declare
    v_val bigint;
begin
    execute 'select last_value from ' || pgq.quote_fqname(i_seq_name) into v_val;
    return v_val;
end;
$$ language plpgsql strict;
