-- pgq._grant_perms_from(src_schema, src_table, dst_schema, dst_table): copy table grants.
--
-- grant_perms uses it to give every event table the privileges an administrator put on
-- pgq.event_template. Grants are only added, never revoked. Like PgQ (which reads
-- information_schema.table_privileges) the source owner's privileges are copied with
-- grant option, and sequence grants are not copied. A missing source copies nothing.
-- Always returns 1.
create or replace function pgq._grant_perms_from(
    src_schema text, src_table text, dst_schema text, dst_table text)
returns integer as $$
declare
    v_grant record;
begin
    for v_grant in
        select case when a.grantee = 0 then 'public' else quote_ident(r.rolname) end as grantee,
               a.privilege_type,
               a.is_grantable or a.grantee = c.relowner as grantable
            from pg_catalog.pg_class c
            join pg_catalog.pg_namespace n on n.oid = c.relnamespace
            cross join lateral pg_catalog.aclexplode(
                coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner)))
                with ordinality as a (grantor, grantee, privilege_type, is_grantable, nr)
            left join pg_catalog.pg_roles r on r.oid = a.grantee
            where n.nspname = src_schema
              and c.relname = src_table
              and c.relkind in ('r', 'p', 'v', 'm', 'f')
              and (a.grantee = 0 or r.oid is not null)
            order by a.nr
    loop
        execute format('grant %s on %I.%I to %s', v_grant.privilege_type, dst_schema, dst_table, v_grant.grantee)
            || case when v_grant.grantable then ' with grant option' else '' end;
    end loop;
    return 1;
end;
$$ language plpgsql strict;
