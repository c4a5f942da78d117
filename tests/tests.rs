//! Black-box tests of the `kiln` binary: every test starts the real program on
//! real sockets, with SQLite in a temp folder or PostgreSQL at 127.0.0.1:5432,
//! and talks to it only through its outside contract (HTTP, signals, exit
//! codes, stderr).

mod util;

mod access_log;
mod admin_api;
mod admin_auth;
mod cli;
mod config_patch;
mod connections;
mod db_outage;
mod db_path;
mod deploy_files;
mod embed_answers;
mod embed_generation;
mod embed_keyed;
mod embed_lifecycle;
mod embed_panics;
mod embed_reload;
mod embed_resource;
mod examples;
mod fleet;
mod fleet_canary;
mod limits;
mod log_level;
mod metrics_endpoint;
mod notes_api;
mod protocol;
mod reload_admin;
mod reload_answers;
mod reload_under_load;
mod restart;
mod rollback_history;
mod signals;
mod startup_fails;
mod startup_warm;
mod systemd_notify;
mod watch_file;
