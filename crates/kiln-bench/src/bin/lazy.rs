//! The lazily initialised baseline for the cold-start benchmark: the same
//! notes listing as kiln's demo app (`GET /notes?limit=N`, newest first,
//! from PostgreSQL) and the same greeting on `GET /`, written the usual
//! way: the pool is created empty, the socket is bound at once, and the
//! first requests pay for opening connections (and everything else first
//! use costs). No pre-bind warm-up of any kind.
//!
//! `lazy --listen 127.0.0.1:8082 --url postgres://postgres@127.0.0.1/test --max-size 32 --threads 2`

use std::net::SocketAddr;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};

/// A lazily initialised notes app: the baseline for cold start.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// PostgreSQL connection URL; the `notes` table must exist.
    #[arg(long)]
    url: String,
    /// Most connections the pool opens (on demand).
    #[arg(long, default_value_t = 32)]
    max_size: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Serialize)]
struct Note {
    id: i64,
    text: String,
}

#[derive(Deserialize)]
struct ListParams {
    limit: Option<u32>,
}

async fn list_notes(
    State(pool): State<Pool>,
    Query(params): Query<ListParams>,
) -> Result<Json<Vec<Note>>, (StatusCode, String)> {
    let unavailable = |e: &dyn std::fmt::Display| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let limit = params.limit.unwrap_or(20).min(100);
    let client = pool.get().await.map_err(|e| unavailable(&e))?;
    let rows = client
        .query(
            "SELECT id, text FROM notes ORDER BY id DESC LIMIT $1",
            &[&i64::from(limit)],
        )
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Json(
        rows.iter()
            .map(|row| Note {
                id: row.get(0),
                text: row.get(1),
            })
            .collect(),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Built, not filled: connections open when requests first need them.
        let pool = kiln_bench::dbq::deadpool(&args.url, args.max_size)?;
        let app = Router::new()
            .route("/", get(|| async { "Hello from kiln" }))
            .route("/notes", get(list_notes))
            .with_state(pool);
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("lazy baseline listening on {}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}
