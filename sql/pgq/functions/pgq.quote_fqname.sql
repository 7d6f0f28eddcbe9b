-- pgq.quote_fqname(name): quote a possibly schema-qualified name for use in SQL text.
--
-- The name is split at the first dot only and the parts are not unquoted, so
-- 'a.b.c' becomes a."b.c" and a bare name lands in public, like PgQ does. Queue
-- metadata (queue_event_seq, queue_data_pfx) is stored in this dotted form.
create or replace function pgq.quote_fqname(i_name text)
returns text as $$
declare
    v_pos integer;
begin
    v_pos := strpos(i_name, '.');
    if v_pos > 0 then
        return quote_ident(substr(i_name, 1, v_pos - 1)) || '.' || quote_ident(substr(i_name, v_pos + 1));
    end if;
    return 'public.' || quote_ident(i_name);
end;
$$ language plpgsql strict immutable;
