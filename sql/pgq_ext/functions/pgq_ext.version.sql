-- pgq_ext.version(): API version of the pgq_ext tracking functions. A constant, as
-- clients only check that the schema is present and new enough.

create or replace function pgq_ext.version()
returns text as $$
    select '3.4'::text;
$$ language sql immutable;
