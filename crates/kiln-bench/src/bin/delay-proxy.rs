//! A TCP proxy that delays every new connection before connecting it
//! upstream: a slow network (or a far-away database) on loopback, for the
//! start-up scaling benchmark. Bytes then flow both ways untouched.
//!
//! `delay-proxy --listen 127.0.0.1:15432 --upstream 127.0.0.1:5432 --delay-ms 100`

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

/// Forward TCP connections to `--upstream`, each after `--delay-ms`.
#[derive(Parser)]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long)]
    listen: SocketAddr,
    /// Where to forward each connection.
    #[arg(long)]
    upstream: SocketAddr,
    /// Delay before each new connection is connected upstream.
    #[arg(long, default_value_t = 100)]
    delay_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "delay-proxy on {} -> {} ({} ms per connect)",
        listener.local_addr()?,
        args.upstream,
        args.delay_ms
    );
    let delay = Duration::from_millis(args.delay_ms);
    loop {
        let (mut inbound, _) = listener.accept().await?;
        let upstream = args.upstream;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}
