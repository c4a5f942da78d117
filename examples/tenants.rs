//! Per-host app instances from one config file: each tenant (a host name)
//! gets its own greeting and its own database pool, built and warmed before
//! the server listens. A reload that changes one tenant's section (or its
//! pool) rebuilds that tenant only, and says so in its `rebuilt` list; the
//! other tenants keep serving from the very same instances. Hosts that are
//! not declared get `404`.
//!
//! ```sh
//! cargo run --example tenants                    # examples/tenants.toml
//! curl -H 'Host: alpha.localhost' 127.0.0.1:8080/          # Hello from Alpha
//! curl -H 'Host: beta.localhost' 127.0.0.1:8080/           # Bonjour de Beta
//! curl -X POST -H 'Host: beta.localhost' 127.0.0.1:8080/visits   # beta's own database
//! curl -H 'Host: gamma.localhost' 127.0.0.1:8080/          # 404
//!
//! sed -i 's/Bonjour de Beta/Salut de Beta/' examples/tenants.toml
//! curl -X POST 127.0.0.1:9090/admin/reload       # "rebuilt": ["tenant:beta.localhost"]
//! ```

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use kiln::resources::{BoundedGet, SqlitePool};
use kiln::{AppConfig, BoxError, KeyContext, Keyed, KeyedApp, Pool};
use serde::{Deserialize, Serialize};

/// `[app]`: the tenants, by host name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Config {
    tenants: BTreeMap<String, Tenant>,
}

impl AppConfig for Config {}

/// `[app.tenants."HOST"]`: one tenant.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Tenant {
    greeting: String,
    /// The tenant's database, a `[pools.NAME]`.
    pool: String,
}

struct Tenants;

impl KeyedApp for Tenants {
    type Config = Config;
    type Section = Tenant;
    const NAME: &'static str = "tenant";

    fn sections(config: &Config) -> &BTreeMap<String, Tenant> {
        &config.tenants
    }

    async fn build(
        &self,
        host: &str,
        tenant: &Tenant,
        context: &KeyContext,
    ) -> Result<Router, BoxError> {
        // Taken through the context: a reload that rebuilds this pool
        // rebuilds this tenant too.
        let Some(Pool::Sqlite(pool)) = context.pool(&tenant.pool).cloned() else {
            return Err(format!("pool {:?}: expected a SQLite [pools.NAME]", tenant.pool).into());
        };
        // Part of warming the tenant: its schema exists before any request.
        pool.get()
            .await?
            .interact(|conn| {
                conn.execute_batch("CREATE TABLE IF NOT EXISTS visits (at TEXT NOT NULL)")
            })
            .await
            .map_err(|e| e.to_string())??;
        let site = Site {
            host: host.to_owned(),
            greeting: tenant.greeting.clone(),
            pool,
        };
        Ok(Router::new()
            .route("/", get(greeting))
            .route("/visits", post(visit))
            .with_state(site))
    }
}

#[derive(Clone)]
struct Site {
    host: String,
    greeting: String,
    pool: SqlitePool,
}

async fn greeting(State(site): State<Site>) -> String {
    format!("{}\n", site.greeting)
}

/// Records a visit in the tenant's own database.
async fn visit(State(site): State<Site>) -> Result<String, (StatusCode, String)> {
    let unavailable = |e: String| (StatusCode::SERVICE_UNAVAILABLE, e);
    let conn = site
        .pool
        .get_bounded()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let visits: i64 = conn
        .interact(|conn| {
            conn.execute("INSERT INTO visits (at) VALUES (datetime('now'))", [])?;
            conn.query_row("SELECT count(*) FROM visits", [], |row| row.get(0))
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(format!("visit {visits} to {}\n", site.host))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tenants.toml");
    let config = std::env::args()
        .nth(1)
        .unwrap_or_else(|| default.to_owned());
    let loaded = kiln::load_config(config.as_ref())?;
    // kiln's subscriber: reloads apply `log.level`.
    kiln::logging::init(&loaded.config.log)?;
    kiln::serve(Keyed::by_host(Tenants), loaded).await?;
    Ok(())
}
