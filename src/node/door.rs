//! Calls of the master's node doors that carry the node's key (`pool_key`).
//!
//! Pooled daemons share one server login, so the doors (`pgfan.node_caller`) know a
//! daemon's node by the key set in its transaction. The key is set with
//! `set_config(..., true)`: for that transaction only, so it never stays on a server
//! connection that PgBouncer hands to the next client.

/// `select <call>` run with the key in `$<key_param>` set for its own transaction (a
/// single statement outside a transaction block is one): the subquery in FROM is
/// evaluated before the call in the target list. An empty key sets nothing usable, and the
/// login decides as without one.
pub fn keyed(call: &str, key_param: usize) -> String {
    format!("select {call} from (select set_config('pgfan.node_key', ${key_param}, true)) key")
}

/// The statement that sets the key for the rest of the transaction it runs in.
pub const SET_KEY: &str = "select set_config('pgfan.node_key', $1, true)";

/// The node's key for the doors, empty without one.
pub fn key(cfg: &super::NodeConfig) -> &str {
    cfg.pool_key.as_ref().map_or("", |k| k.expose())
}
