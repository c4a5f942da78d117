//! The stretch baseline: actix-web serving the same `GET /` answer as
//! kiln's demo app, each worker's app built by actix's per-worker factory
//! with the configuration in a shared `Arc`.
//!
//! `actix --listen 127.0.0.1:8081 --threads 1 --greeting "Hello from kiln"`:
//! each thread runs its own single-threaded runtime, as kiln's workers do.

use std::sync::Arc;

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};
use clap::Parser;
use kiln_bench::baseline::BaselineArgs;

/// actix-web with a plain `Arc` config: the stretch target.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    baseline: BaselineArgs,
}

/// The whole configuration, read-only, shared by every request.
struct Config {
    greeting: Bytes,
}

async fn greeting(config: web::Data<Config>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(config.greeting.clone())
}

fn main() -> std::io::Result<()> {
    let args = Args::parse().baseline;
    let config = web::Data::from(Arc::new(Config {
        greeting: Bytes::from(args.greeting),
    }));
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(config.clone())
                .route("/", web::get().to(greeting))
        })
        .workers(args.threads)
        .disable_signals()
        .bind(args.listen)?;
        eprintln!("actix-web listening on {}", args.listen);
        server.run().await
    })
}
