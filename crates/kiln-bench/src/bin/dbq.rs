//! The database path, three ways: `GET /q` checks a connection out of a
//! PostgreSQL pool and runs a prepared `SELECT 1` on it
//! ([`kiln_bench::dbq::select_one`]); `GET /wait` answers (and resets) the
//! checkout-wait percentiles.
//!
//! - `dbq --server kiln --config q.toml`: an app embedded in kiln
//!   (`kiln::serve`), pool `main` from the file, warmed by kiln.
//! - `dbq --server axum --url … --max-size 16 --threads N`: bare axum and
//!   deadpool-postgres, one current-thread runtime for 1 thread, tokio's
//!   multi-thread runtime for more; connections driven where they opened.
//! - `dbq --server actix …`: actix-web with the pool built in `main` and
//!   shared as `web::Data`, as its guide does; its connections are driven
//!   by the `System` runtime on the main thread.
//!
//! The anchors' pools are pre-warmed as kiln's are: `max_size` connections
//! checked out at once and pinged before the socket is bound.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Router, serve::ListenerExt as _};
use clap::{Parser, ValueEnum};
use deadpool_postgres::Pool;
use kiln::{App, BoxError, Generation};
use kiln_bench::baseline::runtime;
use kiln_bench::dbq::{deadpool, select_one, waits_json};

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Kiln,
    Axum,
    Actix,
}

/// `GET /q` = `pool.get()` + `SELECT 1`, served by kiln, axum or actix-web.
#[derive(Parser)]
struct Args {
    /// Which server.
    #[arg(long, value_enum)]
    server: Kind,
    /// kiln's configuration file (kiln only).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Address to listen on (anchors only; kiln reads `server.listen`).
    #[arg(long, default_value = "127.0.0.1:8083")]
    listen: SocketAddr,
    /// PostgreSQL URL (anchors only).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1/kiln_bench")]
    url: String,
    /// The pool's size, all of it opened before binding (anchors only).
    #[arg(long, default_value_t = 16)]
    max_size: usize,
    /// Worker threads (anchors only).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.server {
        Kind::Kiln => kiln_main(&args),
        Kind::Axum => axum_main(&args),
        Kind::Actix => actix_main(&args),
    }
}

// --- kiln ---------------------------------------------------------------

/// The app: `GET /q` on pool `main`.
struct Q;

impl App for Q {
    type Config = Empty;
    type State = ();

    async fn prepare(
        &self,
        generation: &Generation<Empty>,
        _: Option<&()>,
    ) -> Result<(), BoxError> {
        match generation.pool("main") {
            Some(kiln::Pool::Postgres(_)) => Ok(()),
            _ => Err("dbq needs a PostgreSQL pool named `main`".into()),
        }
    }

    fn router(&self, generation: &Generation<Empty>, _: &()) -> Router {
        let pool = generation
            .pool("main")
            .cloned()
            .expect("checked by prepare");
        Router::new()
            .route("/q", get(kiln_q))
            .route("/wait", get(|| async { waits_json() }))
            .with_state(pool)
    }
}

/// No `[app]` keys.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
struct Empty {}
impl kiln::AppConfig for Empty {}

async fn kiln_q(State(pool): State<kiln::Pool>) -> Result<String, (StatusCode, String)> {
    let kiln::Pool::Postgres(pool) = &pool else {
        unreachable!("checked by prepare")
    };
    answer(select_one(pool).await)
}

fn kiln_main(args: &Args) -> anyhow::Result<()> {
    let path = args
        .config
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--server kiln needs --config"))?;
    let loaded = kiln::load_config::<Empty>(path)?;
    kiln::logging::init(&loaded.config.log)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(kiln::serve(Q, loaded));
    runtime.shutdown_background();
    Ok(served?)
}

// --- the anchors ----------------------------------------------------------

fn answer(result: Result<i32, String>) -> Result<String, (StatusCode, String)> {
    result
        .map(|one| one.to_string())
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))
}

/// A deadpool-postgres pool as a user builds one, opened and pinged in
/// full on the calling runtime.
async fn warm_pool(args: &Args) -> anyhow::Result<Pool> {
    let pool = deadpool(&args.url, args.max_size)?;
    let held = futures_util::future::try_join_all((0..args.max_size).map(|_| async {
        let client = pool.get().await?;
        client.simple_query("SELECT 1").await?;
        anyhow::Ok(client)
    }))
    .await?;
    drop(held);
    Ok(pool)
}

async fn axum_q(State(pool): State<Pool>) -> Result<String, (StatusCode, String)> {
    answer(select_one(&pool).await)
}

fn axum_main(args: &Args) -> anyhow::Result<()> {
    runtime(args.threads)?.block_on(async move {
        let pool = warm_pool(args).await?;
        let app = Router::new()
            .route("/q", get(axum_q))
            .route("/wait", get(|| async { waits_json() }))
            .with_state(pool);
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("axum + deadpool-postgres listening on {}", args.listen);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    })
}

async fn actix_q(pool: actix_web::web::Data<Pool>) -> actix_web::HttpResponse {
    match select_one(&pool).await {
        Ok(one) => actix_web::HttpResponse::Ok().body(one.to_string()),
        Err(e) => actix_web::HttpResponse::ServiceUnavailable().body(e),
    }
}

fn actix_main(args: &Args) -> anyhow::Result<()> {
    use actix_web::{App, HttpServer, web};
    actix_web::rt::System::new().block_on(async move {
        let pool = web::Data::new(warm_pool(args).await?);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(pool.clone())
                .route("/q", web::get().to(actix_q))
                .route("/wait", web::get().to(|| async { waits_json() }))
        })
        .workers(args.threads)
        .disable_signals()
        .bind(args.listen)?;
        eprintln!("actix-web + deadpool-postgres listening on {}", args.listen);
        server.run().await?;
        Ok(())
    })
}
