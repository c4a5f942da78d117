//! The limit kiln is measured against: bare axum serving the same `GET /`
//! handler as kiln's demo app (the greeting as `text/plain`), with the
//! configuration in a plain `Arc` handed to the handler as `State`. Nothing
//! reloads, nothing is swapped.
//!
//! `bare --listen 127.0.0.1:8081 --threads 1 --greeting "Hello from kiln"`:
//! one thread runs a current-thread runtime (as each kiln worker does);
//! more run tokio's multi-thread runtime with that many workers.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt as _;
use clap::Parser;
use kiln_bench::baseline::BaselineArgs;

/// Bare axum with a plain `Arc` config: the baseline for request overhead.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    baseline: BaselineArgs,
}

/// The whole configuration, read-only, shared by every request.
struct Config {
    greeting: Bytes,
}

async fn greeting(State(config): State<Arc<Config>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        config.greeting.clone(),
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse().baseline;
    kiln_bench::baseline::runtime(args.threads)?.block_on(async move {
        let config = Arc::new(Config {
            greeting: Bytes::from(args.greeting),
        });
        let app = Router::new().route("/", get(greeting)).with_state(config);
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("bare axum listening on {}", listener.local_addr()?);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    })
}
