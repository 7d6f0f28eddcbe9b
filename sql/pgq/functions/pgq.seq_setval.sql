-- pgq.seq_setval(seq, value): move a sequence forward to value, never backwards.
--
-- Used by the external ticker and force_tick; event ids and tick ids must stay
-- monotonic, so a lower value leaves the sequence alone. Returns the resulting value.
create or replace function pgq.seq_setval(i_seq_name text, i_new_value bigint)
returns bigint as $$
declare
    v_val bigint;
begin
    v_val := pgq.seq_getval(i_seq_name);
    if v_val < i_new_value then
        perform pg_catalog.setval(pgq.quote_fqname(i_seq_name)::regclass, i_new_value);
        v_val := i_new_value;
    end if;
    return v_val;
end;
$$ language plpgsql strict;
