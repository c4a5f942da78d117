//! The database goes away and comes back: requests that need it answer 503
//! with `Retry-After` within the pool's `wait_timeout`, never hang and never
//! show the driver's error text; readiness stays true; `/admin/status` shows
//! the pool unreachable, then ok again; and the pool climbs back to its
//! `warm` floor on its own, before any request asks.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{self, Config, PgProxy, Server};

/// How long a 503 may take beyond `wait_timeout`: a debug build on a busy
/// machine. Without a bound, an outage answer takes the kernel's minutes.
const MARGIN: Duration = Duration::from_millis(1500);
/// How long recovery may take once the database is back (the top-up backs
/// off while the database is away).
const RECOVERY: Duration = Duration::from_secs(30);

fn pool_status(server: &Server) -> Value {
    let status = server.admin_get("/admin/status");
    assert_eq!(status.status, 200, "{status:?}");
    status.json()["pools"]["main"].clone()
}

#[test]
fn a_database_outage_answers_503_with_retry_after_and_the_pool_recovers_to_its_floor() {
    let pg = util::postgres();
    let proxy = PgProxy::start(Duration::ZERO);
    let wait_timeout = Duration::from_secs(2);
    let config = Config::postgres(&pg.url_at(&proxy.addr().to_string()))
        .set("pools.main.max_size", "4")
        .set("pools.main.warm", "2")
        .set_str("pools.main.wait_timeout", "2s");
    let server = Server::start(&config.render());

    let created = server.post_json("/notes", &json!({"text": "before"}));
    assert_eq!(created.status, 201, "{created:?}");
    let before = pool_status(&server);
    assert_eq!(before["size"], 2, "{before}");
    assert_eq!(before["health"], "ok", "{before}");
    assert_eq!(pg.backends(), 2, "the warm floor's backends");

    proxy.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let reply = server.get("/notes");
        let took = started.elapsed();
        assert!(
            took < wait_timeout + MARGIN,
            "an outage answer took {took:?} (wait_timeout {wait_timeout:?}): {reply:?}"
        );
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            reply
                .header("retry-after")
                .is_some_and(|v| v.parse::<u64>().is_ok()),
            "no Retry-After in seconds: {reply:?}"
        );
        assert_eq!(
            reply.json()["error"],
            "the database is unavailable; retry later",
            "the driver's text stays in the log: {reply:?}"
        );
    }
    // A burst wider than the pool: those that wait for a slot are bounded
    // by the same `wait_timeout`, not by it twice.
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let url = server.url("/notes");
            std::thread::spawn(move || {
                let started = Instant::now();
                let reply = util::call(&util::agent(), "GET", &url, &[], None).expect("an answer");
                (started.elapsed(), reply.status)
            })
        })
        .collect();
    for answer in burst {
        let (took, status) = answer.join().expect("the request thread");
        assert_eq!(status, 503);
        assert!(
            took < wait_timeout + MARGIN,
            "an outage answer in a burst took {took:?} (wait_timeout {wait_timeout:?})"
        );
    }
    // Readiness is not coupled to the database: a shared outage must not
    // take every instance out of the load balancer.
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(
        server.get("/").status,
        200,
        "routes without the database serve"
    );
    util::wait_until(
        RECOVERY,
        "/admin/status to show pool main unreachable",
        || {
            let pool = pool_status(&server);
            pool["health"] == "unreachable"
                && pool["last_error"].as_str().is_some_and(|e| !e.is_empty())
                && pool["last_error_at"].is_string()
        },
    );

    proxy.restore();
    // No request is made: the pool climbs back to its floor by itself.
    util::wait_until(RECOVERY, "pool main to be back at its warm floor", || {
        let pool = pool_status(&server);
        pool["health"] == "ok" && pool["size"] == 2 && pool["available"] == 2
    });
    util::wait_until(RECOVERY, "two PostgreSQL backends, as before", || {
        pg.backends() == 2
    });
    let listed = server.get("/notes");
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.json()[0]["text"], "before");
    assert_eq!(pool_status(&server)["size"], 2, "served from the floor");
    assert_eq!(pg.backends(), 2);
}

/// Serves nothing; the test reads the pool directly.
struct Bare;

impl kiln::App for Bare {
    type Config = util::Greeting;
    type State = ();

    async fn prepare(
        &self,
        _: &kiln::Generation<util::Greeting>,
        _: Option<&()>,
    ) -> Result<(), kiln::BoxError> {
        Ok(())
    }

    fn router(&self, _: &kiln::Generation<util::Greeting>, _: &()) -> axum::Router {
        axum::Router::new()
    }
}

/// `SHOW name` on a connection of pool `main`.
async fn show(kiln: &kiln::Kiln<Bare>, name: &str) -> String {
    let generation = kiln.current();
    let Some(kiln::Pool::Postgres(pool)) = generation.pool("main") else {
        panic!("pool main is PostgreSQL");
    };
    let client = pool.get().await.expect("a connection");
    let row = client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("SHOW runs");
    row.get(0)
}

#[test]
fn statement_timeout_applies_to_every_connection_and_a_reload_changes_it() {
    let pg = util::postgres();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(statement_timeout(&pg));
}

async fn statement_timeout(pg: &util::PgSchema) {
    let config = |timeout: &str| {
        Config::postgres(&pg.url())
            .set("pools.main.warm", "2")
            .set_str("pools.main.statement_timeout", timeout)
            .render()
    };
    let site = util::Site::new(&config("1500ms"));
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = kiln::Kiln::start(Bare, loaded).await.expect("kiln starts");
    assert_eq!(show(&kiln, "statement_timeout").await, "1500ms");

    site.write_config(&config("3s"));
    kiln.reload(kiln::Trigger::Api)
        .await
        .expect("the reload applies");
    assert_eq!(show(&kiln, "statement_timeout").await, "3s");
}

#[test]
fn a_zero_statement_timeout_is_refused_naming_the_key() {
    let site = util::Site::new(
        &Config::sqlite()
            .set_str("pools.main.statement_timeout", "0s")
            .render(),
    );
    let out = util::run(site.command().arg(site.config_path()));
    assert!(!out.status.success(), "{out:?}");
    util::assert_error_line(
        &out.stderr,
        &["pools.main.statement_timeout", "at least 1ms"],
    );
}

#[test]
fn a_reload_whose_warm_up_times_out_closes_its_new_connections_at_once() {
    let pg = util::postgres();
    // The server checks every 200 ms whether a backend's client is gone, so
    // that a closed connection ends its backend even while it waits on a lock.
    let url = format!("{}%20-cclient_connection_check_interval%3D200", pg.url());
    let config = |max_size: &str| {
        Config::postgres(&url)
            .set("pools.main.max_size", max_size)
            .set("pools.main.warm", "2")
            .set_str("server.warm_timeout", "3s")
            .set("server.warm_requests", r#"["/notes"]"#)
            .render()
    };
    let server = Server::start(&config("4"));
    assert_eq!(pg.backends(), 2, "the warm floor's backends");

    // The new generation's warm requests wait on the lock until the
    // warm-up gives up.
    let lock = pg.lock_table("notes");
    server.site.write_config(&config("3"));
    let refused = server.reload();
    util::assert_refused(&refused, 503, 1);
    util::wait_until(
        RECOVERY,
        "the refused generation's connections to close while the lock is still held",
        || pg.backends() == 2,
    );
    drop(lock);
    assert_eq!(server.get("/notes").status, 200);
    assert_eq!(pg.backends(), 2);
    assert_eq!(server.status_generation(), 1);
}

#[test]
fn a_failing_query_answers_500_without_the_servers_text() {
    let pg = util::postgres();
    let server = Server::start(&Config::postgres(&pg.url()).render());
    util::pg_admin(&format!("DROP TABLE {}.notes", pg.name()));
    let reply = server.get("/notes");
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(
        reply.json()["error"],
        "the database query failed; the server log has the details"
    );
    assert!(reply.header("retry-after").is_none(), "{reply:?}");
    // The server's message is in the log, with its cause.
    assert!(
        server
            .stderr
            .wait_for(0, "relation \"notes\" does not exist", util::EXIT_TIMEOUT)
            .is_some(),
        "the log names the cause"
    );
}
