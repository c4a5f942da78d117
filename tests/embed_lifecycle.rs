//! The embedded lifecycle: workers that come and go with their runtimes
//! (an embedder's test suite), `/readyz` while embedded, `Kiln::shutdown`,
//! and dropping kiln outside any runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use kiln::{App, BoxError, Generation, Kiln, ReloadError, Trigger};

use crate::util::{
    Config, EMBED_TIMEOUT, Gate, Greeting, GreetingApp, Site, get_in_process, wait_until_async,
};

fn config(greeting: &str) -> String {
    Config::sqlite().greeting(greeting).render()
}

/// A runtime like the one each `#[tokio::test]` makes for itself.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn start(site: &Site) -> Kiln<GreetingApp> {
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    Kiln::start(GreetingApp, loaded).await.expect("kiln starts")
}

#[test]
fn reloads_keep_working_after_the_runtimes_that_attached_are_gone() {
    let site = Site::new(&config("one"));
    let kiln = runtime().block_on(start(&site));
    // One "test" attaches a router and keeps it (a shared fixture); its
    // runtime then ends. Another attaches one and drops it.
    let kept = {
        let first = runtime();
        let router = first.block_on(kiln.router()).expect("a worker attaches");
        drop(first);
        router
    };
    runtime().block_on(async {
        drop(kiln.router().await.expect("a worker attaches"));
    });

    // A later "test", on its own runtime: the reload applies, the kept router
    // serves the new generation, and the dropped worker is gone.
    runtime().block_on(async {
        site.write_config(&config("two"));
        let outcome = kiln.reload(Trigger::Api).await.expect("the reload applies");
        assert_eq!(outcome.generation, 2);
        assert_eq!(get_in_process(&kept, None, "/").await.body, "two");
        assert_eq!(
            kiln.status().workers.len(),
            1,
            "the dropped worker was pruned: {:?}",
            kiln.status().workers
        );
    });
    // And once more, from yet another runtime.
    runtime().block_on(async {
        site.write_config(&config("three"));
        kiln.reload(Trigger::Api).await.expect("the reload applies");
        assert_eq!(get_in_process(&kept, None, "/").await.body, "three");
        kiln.shutdown(Duration::from_secs(5)).await;
    });
}

#[tokio::test]
async fn embedded_readyz_is_ready_from_start_until_shutdown() {
    let site = Site::new(&config("hello"));
    let kiln = start(&site).await;
    let app = kiln.router().await.expect("a worker attaches");
    assert_eq!(get_in_process(&app, None, "/readyz").await.status, 200);

    let watch = tokio::spawn(kiln.clone().watch());
    tokio::time::timeout(EMBED_TIMEOUT, kiln.shutdown(Duration::from_secs(2)))
        .await
        .expect("shutdown returns within its grace");
    assert_eq!(get_in_process(&app, None, "/readyz").await.status, 503);
    tokio::time::timeout(EMBED_TIMEOUT, watch)
        .await
        .expect("the watch ends with shutdown")
        .expect("the watch task");
    for (name, pool) in kiln.current().pools().iter() {
        assert_eq!(pool.status().size, 0, "pool {name} closed");
    }
    assert!(kiln.status().draining);
    assert!(matches!(
        kiln.reload(Trigger::Api).await,
        Err(ReloadError::Draining)
    ));
    // Idempotent.
    kiln.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn dropping_kiln_outside_a_runtime_does_not_panic() {
    for runtime_alive in [true, false] {
        let site = Site::new(&config("hello"));
        let rt = runtime();
        let (kiln, app) = rt.block_on(async {
            let kiln = start(&site).await;
            let app = kiln.router().await.expect("a worker attaches");
            assert_eq!(get_in_process(&app, None, "/").await.status, 200);
            (kiln, app)
        });
        if !runtime_alive {
            drop(rt);
            drop((kiln, app));
        } else {
            // Dropped on a thread of its own, where no runtime is entered.
            std::thread::spawn(move || drop((kiln, app)))
                .join()
                .expect("dropping kiln outside a runtime panicked");
            drop(rt);
        }
    }
}

/// Generation 1 answers `/` at once; later ones wait at the gate for ever,
/// counting in `dropped` each request dropped unanswered.
struct HangingWarmUp {
    gate: Arc<Gate>,
    dropped: Arc<AtomicUsize>,
}

/// Counts itself in when dropped.
struct CountDrop(Arc<AtomicUsize>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl App for HangingWarmUp {
    type Config = Greeting;
    type State = ();

    async fn prepare(&self, _: &Generation<Greeting>, _: Option<&()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn router(&self, generation: &Generation<Greeting>, _: &()) -> Router {
        if generation.id() == 1 {
            return Router::new().route("/", get(|| async { "ok" }));
        }
        let (gate, dropped) = (self.gate.clone(), self.dropped.clone());
        Router::new().route(
            "/",
            get(move || async move {
                let _count = CountDrop(dropped);
                gate.pass().await;
                "never"
            }),
        )
    }
}

#[tokio::test]
async fn a_reload_whose_warm_up_times_out_drops_its_warm_requests() {
    let site = Site::new(&config("one"));
    let gate = Arc::new(Gate::default());
    let dropped = Arc::new(AtomicUsize::new(0));
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let app = HangingWarmUp {
        gate: gate.clone(),
        dropped: dropped.clone(),
    };
    let kiln = Kiln::start(app, loaded).await.expect("kiln starts");
    let _router = kiln.router().await.expect("a worker attaches");

    site.write_config(
        &Config::sqlite()
            .greeting("two")
            .set_str("server.warm_timeout", "1s")
            .render(),
    );
    let refused = kiln.reload(Trigger::Api).await;
    assert!(
        matches!(
            &refused,
            Err(ReloadError::Build(kiln::BuildError::Timeout { .. }))
        ),
        "{refused:?}"
    );
    gate.wait_entered(1).await;
    wait_until_async(
        "the refused generation's warm request to be dropped",
        || dropped.load(Ordering::SeqCst) >= 1,
    )
    .await;
    assert_eq!(kiln.current().id(), 1);
}

/// What the README's lifecycle says of subscribers and shutdown: a
/// subscriber keeps waiting after `shutdown` (a reload is refused, nothing
/// is published), an attached router still answers, and `changed()` ends
/// once the last handle is dropped.
#[tokio::test]
async fn a_subscriber_ends_when_the_last_handle_is_dropped_not_at_shutdown() {
    let site = Site::new(&config("hello"));
    let kiln = start(&site).await;
    let router = kiln.router().await.expect("a worker attaches");
    let mut generations = kiln.subscribe();
    generations.borrow_and_update();

    kiln.shutdown(Duration::from_secs(5)).await;
    site.write_config(&config("after shutdown"));
    assert!(
        matches!(kiln.reload(Trigger::Api).await, Err(ReloadError::Draining)),
        "a reload after shutdown is refused"
    );
    assert_eq!(
        generations.has_changed().ok(),
        Some(false),
        "the subscriber is still waiting after shutdown, told of nothing"
    );
    let reply = get_in_process(&router, None, "/").await;
    assert_eq!(reply.status, 200, "the attached router still answers");

    drop(kiln);
    let ended = tokio::time::timeout(EMBED_TIMEOUT, generations.changed()).await;
    assert!(
        matches!(ended, Ok(Err(_))),
        "changed() ends once the last handle is dropped: {ended:?}"
    );
}
