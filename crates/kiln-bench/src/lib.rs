//! kiln's benchmark kit: what the driver (`kiln-bench`) and the baselines
//! share. Nothing here is part of kiln; `crates/kiln-bench/run.sh` is the
//! one entry point.
//!
//! - [`baseline`]: the command line of the baseline servers.
//! - [`dbq`]: the database path's query and checkout-wait histogram.
//! - [`stats`]: percentiles and median/min/max over repeated runs.
//! - [`http`]: a minimal HTTP/1.1 client (one connection, keep-alive) that
//!   reports status, generation header and timing.
//! - [`load`]: oha at a fixed rate plus a probe that tags every answer
//!   with its configuration revision; the reload figures drawn from them.
//! - [`kernel`]: the kernel's drop and reset counters (`nstat`), read
//!   around a run.
//! - [`process`]: start a server (optionally pinned with `taskset`), wait
//!   until its port accepts, read its RSS, stop it (or a process that a
//!   restart started, which is not a child).

pub mod baseline;
pub mod dbq;
pub mod http;
pub mod kernel;
pub mod load;
pub mod process;
pub mod stats;

/// The config-read mechanisms the criterion bench measures, in report order
/// (the bench's ids and the driver's table rows).
pub const CONFIG_READ_MECHANISMS: [&str; 6] = [
    "arcswap_load",
    "arcswap_load_full",
    "arcswap_cache",
    "std_rwlock",
    "tokio_rwlock",
    "std_mutex",
];
