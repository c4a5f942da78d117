//! kiln's benchmark kit: what the driver (`kiln-bench`) and the baselines
//! share. Nothing here is part of kiln; `crates/kiln-bench/run.sh` is the
//! one entry point.
//!
//! - [`stats`]: percentiles and median/min/max over repeated runs.
//! - [`http`]: a minimal HTTP/1.1 client (one connection, keep-alive) that
//!   reports status, generation header and timing.
//! - [`process`]: start a server (optionally pinned with `taskset`), wait
//!   until its port accepts, read its RSS, stop it.

pub mod http;
pub mod process;
pub mod stats;
