//! Per-key app instances (`kiln::Keyed`) in an embedded kiln: declared keys
//! are built and warmed at start, a reload rebuilds only the keys whose
//! section (or pool) changed, undeclared keys get 404, and a key built on
//! demand is built once under 50 concurrent first requests, a failed one
//! answers every waiter (and the next requests, for a while) without being
//! built again, and the host key ignores case and port.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use kiln::{AppConfig, BoxError, KeyContext, Keyed, KeyedApp, Kiln, ReloadOutcome, Trigger};
use serde::{Deserialize, Serialize};

use crate::util::{Config, EMBED_TIMEOUT, Gate, Site, get_in_process};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Sites {
    greeting: String,
    sites: BTreeMap<String, SiteConfig>,
    /// The section of every undeclared `*.demand` host.
    on_demand: Option<SiteConfig>,
}

impl AppConfig for Sites {}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SiteConfig {
    greeting: String,
    pool: String,
}

/// What the instances did, by key.
#[derive(Default)]
struct Counts {
    builds: Mutex<BTreeMap<String, usize>>,
    hits: Mutex<BTreeMap<String, usize>>,
    serial: AtomicUsize,
    /// Where builds of on-demand keys wait until the test opens it.
    on_demand: Gate,
    /// Requests that reached the test's router.
    arrived: tokio::sync::watch::Sender<usize>,
}

fn bump(counts: &Mutex<BTreeMap<String, usize>>, key: &str) {
    *counts.lock().unwrap().entry(key.to_owned()).or_default() += 1;
}

fn snapshot(counts: &Mutex<BTreeMap<String, usize>>) -> Vec<(String, usize)> {
    counts.lock().unwrap().clone().into_iter().collect()
}

/// Each instance answers `<greeting> #<serial>`, its serial counting builds.
struct PerHost(Arc<Counts>);

impl KeyedApp for PerHost {
    type Config = Sites;
    type Section = SiteConfig;
    const NAME: &'static str = "site";

    fn sections(config: &Sites) -> &BTreeMap<String, SiteConfig> {
        &config.sites
    }

    fn on_demand(&self, key: &str, config: &Sites) -> Option<SiteConfig> {
        key.ends_with(".demand")
            .then(|| config.on_demand.clone())
            .flatten()
    }

    async fn build(
        &self,
        key: &str,
        site: &SiteConfig,
        context: &KeyContext,
    ) -> Result<Router, BoxError> {
        context
            .pool(&site.pool)
            .ok_or_else(|| format!("no pool {:?}", site.pool))?;
        if key.ends_with(".demand") {
            self.0.on_demand.pass().await;
        }
        bump(&self.0.builds, key);
        if key.starts_with("broken.") {
            return Err(format!("{key} cannot be built").into());
        }
        let serial = self.0.serial.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = format!("{} #{serial}", site.greeting);
        let (counts, key) = (self.0.clone(), key.to_owned());
        Ok(Router::new().route(
            "/",
            get(move || async move {
                bump(&counts.hits, &key);
                answer
            }),
        ))
    }
}

fn config() -> Config {
    let pool = |config: Config, name: &str| {
        config
            .set_str(&format!("pools.{name}.kind"), "sqlite")
            .set_str(
                &format!("pools.{name}.url"),
                &format!("data/{name}.sqlite3"),
            )
            .set(&format!("pools.{name}.max_size"), "2")
    };
    let config = pool(pool(Config::sqlite(), "pa"), "pb");
    site(site(config, "a.test", "A", "pa"), "b.test", "B", "pb")
        .set_str("app.on_demand.greeting", "On demand")
        .set_str("app.on_demand.pool", "pa")
}

fn site(config: Config, host: &str, greeting: &str, pool: &str) -> Config {
    config
        .set_str(&format!("app.sites.\"{host}\".greeting"), greeting)
        .set_str(&format!("app.sites.\"{host}\".pool"), pool)
}

/// A started kiln serving `PerHost` in a test router, with its counts.
struct Tenants {
    site: Site,
    kiln: Kiln<Keyed<PerHost>>,
    app: Router,
    counts: Arc<Counts>,
}

impl Tenants {
    async fn start() -> Tenants {
        let site = Site::new(&config().render());
        let counts = Arc::new(Counts::default());
        let loaded = kiln::load_config(&site.config_path()).expect("valid config");
        let kiln = Kiln::start(Keyed::by_host(PerHost(counts.clone())), loaded)
            .await
            .expect("kiln starts");
        let arrived = counts.clone();
        let app = Router::new()
            .merge(kiln.router().await.expect("a worker attaches"))
            .layer(axum::middleware::map_request(
                move |request: axum::extract::Request| {
                    arrived.arrived.send_modify(|n| *n += 1);
                    std::future::ready(request)
                },
            ));
        Tenants {
            site,
            kiln,
            app,
            counts,
        }
    }

    async fn get(&self, host: &str) -> String {
        let reply = get_in_process(&self.app, Some(host), "/").await;
        assert_eq!(reply.status, 200, "{host}: {reply:?}");
        reply.body
    }

    async fn reload(&self, config: Config) -> ReloadOutcome {
        self.site.write_config(&config.render());
        self.kiln
            .reload(Trigger::Api)
            .await
            .expect("the reload applies")
    }

    fn builds(&self) -> Vec<(String, usize)> {
        snapshot(&self.counts.builds)
    }
}

fn counted(pairs: &[(&str, usize)]) -> Vec<(String, usize)> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_keys_warm_at_start_and_a_reload_rebuilds_only_the_changed_key() {
    let tenants = Tenants::start().await;
    let both = [("a.test", 1), ("b.test", 1)];
    assert_eq!(tenants.builds(), counted(&both), "built at start");
    assert_eq!(
        snapshot(&tenants.counts.hits),
        counted(&both),
        "each served its warm-up request before any client"
    );
    let a = tenants.get("a.test").await;
    let b = tenants.get("b.test").await;
    assert!(a.starts_with("A #") && b.starts_with("B #"), "{a}, {b}");
    assert_eq!(
        tenants.get("a.test:8080").await,
        a,
        "the port is not the key"
    );

    for host in [Some("c.test"), Some("x.test.demand.not"), None] {
        let reply = get_in_process(&tenants.app, host, "/").await;
        assert_eq!(reply.status, 404, "{host:?}: {reply:?}");
        assert!(reply.json()["error"].is_string(), "{reply:?}");
    }

    // Only b's section changes: only b is rebuilt; a's instance serves on.
    let outcome = tenants.reload(site(config(), "b.test", "B2", "pb")).await;
    assert_eq!(outcome.changed, ["app.sites.b.test.greeting"]);
    assert_eq!(outcome.rebuilt, ["site:b.test"]);
    assert_eq!(tenants.builds(), counted(&[("a.test", 1), ("b.test", 2)]));
    assert_eq!(tenants.get("a.test").await, a, "the same instance");
    assert!(tenants.get("b.test").await.starts_with("B2 #"));

    // a's pool is rebuilt: so is a, and only a.
    let outcome = tenants
        .reload(site(config(), "b.test", "B2", "pb").set("pools.pa.max_size", "3"))
        .await;
    assert_eq!(outcome.rebuilt, ["pa", "site:a.test"]);
    assert_eq!(tenants.builds(), counted(&[("a.test", 2), ("b.test", 2)]));
    assert_ne!(tenants.get("a.test").await, a, "a new instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_built_on_demand_is_built_once_under_50_concurrent_first_requests() {
    let tenants = Arc::new(Tenants::start().await);
    let first: Vec<_> = (0..50)
        .map(|_| {
            let tenants = tenants.clone();
            tokio::spawn(async move { tenants.get("x.demand").await })
        })
        .collect();
    // Every first request is in flight while the one build waits at the gate.
    tenants.counts.on_demand.wait_entered(1).await;
    let mut arrived = tenants.counts.arrived.subscribe();
    tokio::time::timeout(EMBED_TIMEOUT, arrived.wait_for(|n| *n >= 50))
        .await
        .expect("50 requests arrive")
        .expect("the counter lives");
    tenants.counts.on_demand.open();
    let mut answers = Vec::new();
    for request in first {
        answers.push(request.await.expect("a first request"));
    }
    assert!(answers[0].starts_with("On demand #"), "{answers:?}");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    let builds = |key: &str| {
        tenants
            .builds()
            .into_iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, n)| n)
    };
    assert_eq!(builds("x.demand"), 1, "single-flight");

    // Carried over by a reload that leaves its section alone...
    let outcome = tenants.reload(config().greeting("changed")).await;
    assert_eq!(outcome.rebuilt, Vec::<String>::new());
    assert_eq!(tenants.get("x.demand").await, answers[0]);

    // ...rebuilt (eagerly) by one that changes it.
    let outcome = tenants
        .reload(
            config()
                .greeting("changed")
                .set_str("app.on_demand.greeting", "Again"),
        )
        .await;
    assert_eq!(outcome.rebuilt, ["site:x.demand"]);
    assert_eq!(builds("x.demand"), 2);
    assert!(tenants.get("x.demand").await.starts_with("Again #"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_key_ignores_case_and_port_so_a_mixed_case_host_is_one_tenant() {
    let tenants = Tenants::start().await;
    tenants.counts.on_demand.open();
    let a = tenants.get("a.test").await;
    assert_eq!(tenants.get("A.Test:443").await, a, "the declared instance");

    let first = tenants.get("New.Demand").await;
    assert!(first.starts_with("On demand #"), "{first}");
    assert_eq!(tenants.get("new.demand:8080").await, first);
    assert_eq!(tenants.get("NEW.DEMAND").await, first);
    let builds: Vec<_> = tenants
        .builds()
        .into_iter()
        .filter(|(key, _)| key.ends_with(".demand"))
        .collect();
    assert_eq!(
        builds,
        counted(&[("new.demand", 1)]),
        "built once, lower-cased"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_on_demand_build_answers_every_waiter_and_is_not_retried_at_once() {
    let tenants = Arc::new(Tenants::start().await);
    let first: Vec<_> = (0..10)
        .map(|_| {
            let tenants = tenants.clone();
            tokio::spawn(
                async move { get_in_process(&tenants.app, Some("broken.demand"), "/").await },
            )
        })
        .collect();
    tenants.counts.on_demand.wait_entered(1).await;
    let mut arrived = tenants.counts.arrived.subscribe();
    tokio::time::timeout(EMBED_TIMEOUT, arrived.wait_for(|n| *n >= 10))
        .await
        .expect("10 requests arrive")
        .expect("the counter lives");
    tenants.counts.on_demand.open();
    for request in first {
        let reply = request.await.expect("a first request");
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            reply.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("broken.demand")),
            "{reply:?}"
        );
    }
    // A request right after the failure gets it too, without a build.
    let reply = get_in_process(&tenants.app, Some("broken.demand"), "/").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        tenants.builds(),
        counted(&[("a.test", 1), ("b.test", 1), ("broken.demand", 1)]),
        "one build for every request"
    );
}
