//! Black-box tests of the `kiln` binary: every test starts the real program on
//! real sockets, with SQLite in a temp folder or PostgreSQL at 127.0.0.1:5432,
//! and talks to it only through its outside contract (HTTP, signals, exit
//! codes, stderr).

mod util;

mod admin_auth;
mod cli;
mod notes_api;
mod reload_admin;
mod reload_under_load;
mod signals;
mod startup_fails;
mod startup_warm;
