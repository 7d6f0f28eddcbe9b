-- pgq.version(): the PgQ API level this core implements.
--
-- pgqd and the python clients only check that it is '3' or later; a constant (not a
-- catalog look-up) is returned so it can never be NULL.
create or replace function pgq.version()
returns text as $$
begin
    return '3.5';
end;
$$ language plpgsql;
