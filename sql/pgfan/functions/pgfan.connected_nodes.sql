-- pgfan.connected_nodes(): the nodes whose daemon has a session on the master now.
--
-- A node daemon keeps one master session open (its claim, shipper and heartbeat share
-- it), so its liveness shows without it writing anything: a session named for the node
-- (the daemon's application_name, `pgfan node <name>`) or logged in as the login bound to
-- the node (pgfan.node_set_login). The heartbeat can then be rare, and an idle fleet costs
-- the master no writes; `any` routing and `pgfan status` read this before the heartbeat's
-- age. application_name is the client's word, so a session that takes a node's name makes
-- that node look connected: a hint for routing and monitoring, never a right (the node
-- doors check the login, pgfan.node_caller).
-- Two joins rather than one with an OR, so that each is a hash join: with 1,000 nodes and
-- as many sessions, a nested loop would compare every pair.
-- SECURITY DEFINER so that every caller reads the same sessions (pg_stat_activity shows
-- everyone's names and logins, but details of its own sessions only).
create or replace function pgfan.connected_nodes()
returns setof text as $$
    select n.node_name
      from pgfan.node n
      join pg_catalog.pg_stat_activity a on a.application_name = 'pgfan node ' || n.node_name
     where a.datname = pg_catalog.current_database()
    union
    select n.node_name
      from pgfan.node n
      join pg_catalog.pg_stat_activity a on a.usename = n.login_role
     where a.datname = pg_catalog.current_database();
$$ language sql stable security definer
set search_path = pg_catalog, pg_temp;
