//! The command line the baseline servers (`bare`, `actix`) share.

use std::net::SocketAddr;

use clap::Args;

/// Where a baseline listens, on how many threads, and what `GET /` answers.
#[derive(Args, Debug)]
pub struct BaselineArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// What `GET /` answers.
    #[arg(long, default_value = "Hello from kiln")]
    pub greeting: String,
}

/// The runtime a baseline serves on: one current-thread runtime for 1
/// thread (as each kiln worker has), tokio's multi-thread runtime with
/// `threads` workers for more.
///
/// # Errors
///
/// When the runtime cannot be built.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
