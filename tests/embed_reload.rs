//! kiln embedded in a `Router` the test builds: reloads while requests run
//! keep every request on the generation it started on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::get;
use kiln::{App, BoxError, Generation, Kiln, Trigger};

use crate::util::{Config, Gate, Greeting, Reply, Site, get_in_process};

/// Answers `<generation> <greeting>` as its router saw them when it was
/// built; `/slow` first waits at the gate.
struct ProbeApp {
    gate: Arc<Gate>,
}

impl App for ProbeApp {
    type Config = Greeting;
    type State = ();

    async fn prepare(&self, _: &Generation<Greeting>, _: Option<&()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn router(&self, generation: &Generation<Greeting>, _: &()) -> Router {
        let answer = format!("{} {}", generation.id(), generation.app().greeting);
        let gate = self.gate.clone();
        let fast = answer.clone();
        Router::new()
            .route("/", get(move || async move { fast }))
            .route(
                "/slow",
                get(move || async move {
                    gate.pass().await;
                    answer
                }),
            )
    }
}

fn config(generation: u64) -> String {
    Config::sqlite()
        .greeting(&format!("generation {generation}"))
        .render()
}

/// The generation in the header (set by kiln around the app) and in the body
/// (built into the app's router) agree, and the greeting is that generation's.
fn assert_one_generation(reply: &Reply) -> u64 {
    assert_eq!(reply.status, 200, "{reply:?}");
    let (id, greeting) = reply.body.split_once(' ').expect("`<id> <greeting>`");
    let id: u64 = id.parse().expect("a generation id");
    assert_eq!(
        reply.generation(),
        id,
        "header and body disagree: {reply:?}"
    );
    assert_eq!(greeting, format!("generation {id}"), "{reply:?}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_concurrent_requests_keep_each_request_on_one_generation() {
    let site = Site::new(&config(1));
    let gate = Arc::new(Gate::default());
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = Kiln::start(ProbeApp { gate: gate.clone() }, loaded)
        .await
        .expect("kiln starts");
    let app = Router::new()
        .route("/own", get(|| async { "the test's own route" }))
        .nest("/app", kiln.router().await.expect("a worker attaches"));

    // Requests that start on generation 1 and stay in flight across every reload.
    let held: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get_in_process(&app, None, "/app/slow").await })
        })
        .collect();
    gate.wait_entered(4).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let reply = get_in_process(&app, None, "/app").await;
                    seen.push(assert_one_generation(&reply));
                    // In-process requests never wait: let the reloads run too.
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();

    let mut generations = kiln.subscribe();
    for next in 2..=21 {
        site.write_config(&config(next));
        let outcome = kiln.reload(Trigger::Api).await.expect("the reload applies");
        assert_eq!(outcome.generation, next);
        assert_eq!(outcome.changed, ["app.greeting"]);
        // Once the reload has answered, every new request sees the new generation.
        let reply = get_in_process(&app, None, "/app").await;
        assert_eq!(assert_one_generation(&reply), next);
        assert_eq!(generations.borrow_and_update().id(), next);
    }
    stop.store(true, Ordering::Release);
    for client in clients {
        let seen = client.await.expect("the client task");
        assert!(
            seen.windows(2).all(|pair| pair[0] <= pair[1]),
            "one client saw generations go back: {seen:?}"
        );
    }

    gate.open();
    for request in held {
        let reply = request.await.expect("the held request");
        assert_eq!(assert_one_generation(&reply), 1, "{reply:?}");
    }
    assert_eq!(kiln.current().id(), 21);
    let own = get_in_process(&app, None, "/own").await;
    assert_eq!(own.body, "the test's own route");
    assert!(own.header("x-config-generation").is_none(), "{own:?}");
}

/// Records, in `prepare`, whether pool `main` was new to each generation.
#[derive(Clone, Default)]
struct PrepareLog {
    new_main: Arc<std::sync::Mutex<Vec<(u64, bool)>>>,
}

impl App for PrepareLog {
    type Config = Greeting;
    type State = ();

    async fn prepare(
        &self,
        generation: &Generation<Greeting>,
        _: Option<&()>,
    ) -> Result<(), kiln::BoxError> {
        let new = generation.is_new("main");
        self.new_main.lock().unwrap().push((generation.id(), new));
        Ok(())
    }

    fn router(&self, _: &Generation<Greeting>, _: &()) -> Router {
        Router::new()
    }
}

#[tokio::test]
async fn prepare_is_told_which_pools_are_new() {
    let site = Site::new(&config(1));
    let log = PrepareLog::default();
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = Kiln::start(log.clone(), loaded).await.expect("kiln starts");

    // A hot key: the pool is carried over.
    site.write_config(&config(2));
    kiln.reload(Trigger::Api).await.expect("the reload applies");
    // A pool key: the pool is rebuilt.
    site.write_config(
        &Config::sqlite()
            .greeting("generation 3")
            .set("pools.main.max_size", "5")
            .render(),
    );
    let outcome = kiln.reload(Trigger::Api).await.expect("the reload applies");
    assert_eq!(outcome.rebuilt, ["main"]);

    assert_eq!(
        *log.new_main.lock().unwrap(),
        [(1, true), (2, false), (3, true)],
        "(generation, pool main new to it)"
    );
}

/// Its state is the chain of greetings of every published generation; a
/// greeting `refuse` is refused in `prepare`.
struct Chain;

impl App for Chain {
    type Config = Greeting;
    type State = String;

    async fn prepare(
        &self,
        generation: &Generation<Greeting>,
        previous: Option<&String>,
    ) -> Result<String, BoxError> {
        let greeting = &generation.app().greeting;
        if greeting == "refuse" {
            return Err("told to refuse".into());
        }
        Ok(match previous {
            Some(previous) => format!("{previous}>{greeting}"),
            None => greeting.clone(),
        })
    }

    fn router(&self, _: &Generation<Greeting>, chain: &String) -> Router {
        let chain = chain.clone();
        Router::new().route("/", get(move || async move { chain }))
    }
}

#[tokio::test]
async fn prepare_gets_the_published_generations_state_and_router_serves_from_it() {
    let site = Site::new(&Config::sqlite().greeting("a").render());
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = Kiln::start(Chain, loaded).await.expect("kiln starts");
    let app = kiln.router().await.expect("a worker attaches");
    assert_eq!(get_in_process(&app, None, "/").await.body, "a");

    for (greeting, applies, chain) in [
        ("b", true, "a>b"),
        ("refuse", false, "a>b"),
        ("c", true, "a>b>c"),
    ] {
        site.write_config(&Config::sqlite().greeting(greeting).render());
        let reloaded = kiln.reload(Trigger::Api).await;
        assert_eq!(reloaded.is_ok(), applies, "{greeting}: {reloaded:?}");
        assert_eq!(
            get_in_process(&app, None, "/").await.body,
            chain,
            "a refused generation's state is not the next one's previous"
        );
    }
}
