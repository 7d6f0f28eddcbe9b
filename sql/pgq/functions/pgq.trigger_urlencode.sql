-- pgq._pgfan_urlencode(): a text urlencoded the way PgQ's logutriga encodes names and values
-- (unreserved characters -._0-9A-Za-z stay, space becomes +, every other byte %xx in
-- lowercase hex), for the change-capture triggers (pgq.triggers.sql).
--
-- Without a loop over the text: the safe runs are joined into a format() string with a %s
-- where each unsafe run was (safe runs hold no %), and the unsafe runs are hex-encoded all
-- at once, separated by a byte (0x03) that is split out again; a text holding that byte
-- takes the slow, exact way through regexp_split_to_table.
create or replace function pgq._pgfan_urlencode(p_text text)
returns text as $$
declare
    v_safe text[];
    v_runs text[];
begin
    if p_text ~ '^[-._0-9A-Za-z]*$' then
        return p_text;
    elsif strpos(p_text, chr(3)) > 0 then
        return (select string_agg(case when ch ~ '^[-._0-9A-Za-z]$' then ch
                                       else replace(regexp_replace(encode(convert_to(ch, current_setting('server_encoding')), 'hex'),
                                                                   '(..)', '%\1', 'g'), '%20', '+') end, '' order by i)
                  from regexp_split_to_table(p_text, '') with ordinality t(ch, i));
    end if;
    v_safe := regexp_split_to_array(p_text, '[^-._0-9A-Za-z]+');
    v_runs := regexp_split_to_array(p_text, '[-._0-9A-Za-z]+');
    return format(array_to_string(v_safe, '%s'),
                  variadic (string_to_array(replace(regexp_replace(
                      encode(convert_to(array_to_string(v_runs, chr(3)), current_setting('server_encoding')), 'hex'),
                      '(..)', '%\1', 'g'), '%20', '+'), '%03'))[case when v_runs[1] = '' then 2 else 1 end:]);
end;
$$ language plpgsql stable strict;

do $grant$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgq_writer') then
        grant execute on function pgq._pgfan_urlencode(text) to pgq_writer;
    end if;
end
$grant$;
