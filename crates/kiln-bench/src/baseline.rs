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
