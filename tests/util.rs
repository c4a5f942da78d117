//! Shared helpers: a temp folder holding a config file, the `kiln` process under
//! test with its output captured, HTTP calls, and a PostgreSQL schema per test.
//!
//! Every wait here is bounded and fails loudly with what it waited for; nothing
//! asserts on elapsed time.

use std::time::Duration;

/// How long a server may take to log `ready:`. Generous: debug build, two test
/// threads each starting servers on a 2-core machine.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a process may take to exit once it is expected to.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-request budget for one HTTP call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

mod changes;
mod config;
mod embed;
mod http;
mod pg;
mod process;

pub(crate) use changes::*;
pub(crate) use config::*;
pub(crate) use embed::*;
pub(crate) use http::*;
pub(crate) use pg::*;
pub(crate) use process::*;
