//! pgfan: spread SQL work from a master PostgreSQL database over many nodes through
//! transactional PgQ queues, and bring the results back.
//!
//! The library holds everything; `main.rs` only parses the command line.

pub mod admin;
pub mod bouncer;
pub mod cluster;
pub mod config;
pub mod consumer;
pub mod db;
pub mod demo;
pub mod install;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod outage;
pub mod passfile;
pub mod pgq;
pub mod print_consumer;
pub mod reducer;
pub mod relay;
pub mod service;
pub mod signals;
pub mod sql;
pub mod status;
pub mod systemd;
pub mod ticker;
pub mod tls;
pub mod urlenc;

/// Version of this build, recorded in `pgfan_meta.component` by `pgfan install`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
