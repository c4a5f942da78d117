//! A custom resource: built from its own config section, warmed before the
//! server listens (its warm-up time is in the log), carried over by reloads
//! that leave its section alone and rebuilt by those that change it.
//!
//! `PrimeTable` stands in for anything expensive to build and cheap to use
//! (a loaded model, a compiled template set, an HTTP client that
//! pre-connects): a sieve over `[resources.primes] limit`.
//!
//! ```sh
//! cargo run --example custom_resource            # examples/custom_resource.toml
//! curl 127.0.0.1:8080/                           # the table's size and when it was built
//! curl 127.0.0.1:8080/primes/7919                # is 7919 prime?
//!
//! sed -i 's/Primes/Prime numbers/' examples/custom_resource.toml
//! curl -X POST 127.0.0.1:9090/admin/reload       # "rebuilt": [] (the table is carried over)
//! sed -i 's/2_000_000/5_000_000/' examples/custom_resource.toml
//! curl -X POST 127.0.0.1:9090/admin/reload       # "rebuilt": ["primes"], warm-up time in the log
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use kiln::{App, AppConfig, BoxError, Generation, Kiln, Resource};
use serde::{Deserialize, Serialize};

/// `[resources.primes]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrimesConfig {
    /// The table answers for numbers up to this one.
    limit: usize,
}

/// Which numbers up to its limit are prime. Cheap to clone (handlers hold
/// it as their state); dropped when the last generation holding it ends.
#[derive(Clone)]
struct PrimeTable {
    composite: Arc<[bool]>,
    count: usize,
    /// Counts builds, to show which reloads rebuilt the table.
    serial: usize,
}

impl Resource for PrimeTable {
    type Config = PrimesConfig;

    async fn build(name: &str, config: PrimesConfig) -> Result<Self, BoxError> {
        if config.limit < 2 {
            return Err("limit: expected an integer ≥ 2".into());
        }
        // CPU-bound work belongs off the async threads.
        let name = name.to_owned();
        Ok(tokio::task::spawn_blocking(move || PrimeTable::sieve(&name, config.limit)).await?)
    }

    /// Pays first-use costs before any request: reads the whole table once.
    async fn warm(&self) -> Result<(), BoxError> {
        let primes = self.composite.iter().skip(2).filter(|c| !**c).count();
        if primes != self.count {
            return Err(format!("table corrupt: {primes} primes, expected {}", self.count).into());
        }
        Ok(())
    }
}

impl PrimeTable {
    fn sieve(name: &str, limit: usize) -> Self {
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let mut composite = vec![false; limit + 1];
        let mut n = 2;
        while n * n <= limit {
            if !composite[n] {
                (n * n..=limit).step_by(n).for_each(|m| composite[m] = true);
            }
            n += 1;
        }
        let count = composite.iter().skip(2).filter(|c| !**c).count();
        let serial = BUILDS.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(resource = name, limit, primes = count, serial, "Sieved");
        Self {
            composite: composite.into(),
            count,
            serial,
        }
    }

    fn limit(&self) -> usize {
        self.composite.len() - 1
    }
}

/// `[app]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Site {
    title: String,
}

impl AppConfig for Site {}

struct PrimesApp;

impl App for PrimesApp {
    type Config = Site;
    type State = ();

    async fn prepare(&self, _: &Generation<Site>, _: Option<&()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn router(&self, generation: &Generation<Site>, _: &()) -> Router {
        let title = generation.app().title.clone();
        let table = generation
            .resource::<PrimeTable>("primes")
            .cloned()
            .expect("registered in main");
        Router::new()
            .route("/", get(summary))
            .route("/primes/{n}", get(is_prime))
            .with_state((title, table))
    }
}

async fn summary(State((title, table)): State<(String, PrimeTable)>) -> String {
    format!(
        "{title}: {} primes up to {} (table #{})\n",
        table.count,
        table.limit(),
        table.serial
    )
}

async fn is_prime(
    State((_, table)): State<(String, PrimeTable)>,
    Path(n): Path<usize>,
) -> Result<String, (StatusCode, String)> {
    match table.composite.get(n) {
        Some(_) if n < 2 => Ok(format!("{n} is not prime\n")),
        Some(false) => Ok(format!("{n} is prime\n")),
        Some(true) => Ok(format!("{n} is not prime\n")),
        None => Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{n} is over the table's limit, {}\n", table.limit()),
        )),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/custom_resource.toml");
    let config = std::env::args()
        .nth(1)
        .unwrap_or_else(|| default.to_owned());
    let loaded = kiln::load_config(config.as_ref())?;
    // kiln's subscriber: reloads apply `log.level`.
    kiln::logging::init(&loaded.config.log)?;
    // The log shows `Resource warm resource=primes took_ms=…` before `ready:`.
    Kiln::builder(PrimesApp)
        .resource::<PrimeTable>("primes")
        .serve(loaded)
        .await?;
    Ok(())
}
