//! Embedded kiln answers truthfully: a subscriber told of a new generation
//! finds the workers already on it, the history lists reloads in the order
//! they ran, and the default configuration asks nothing of the app's routes.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use kiln::{App, Generation, GenerationService, Kiln, ReloadError, Trigger};
use serde_json::json;
use tower::Service as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::util::{self, Config, EMBED_TIMEOUT, Gate, Greeting, Site, get_in_process};

/// Serves `/probe` only (no `/`); `prepare` waits at the gate for a
/// generation whose greeting is `slow`.
struct ProbeApp {
    gate: Arc<Gate>,
}

impl App for ProbeApp {
    type Config = Greeting;
    type State = ();

    async fn prepare(
        &self,
        generation: &Generation<Greeting>,
        _: Option<&()>,
    ) -> Result<(), kiln::BoxError> {
        if generation.app().greeting == "slow" {
            self.gate.pass().await;
        }
        Ok(())
    }

    fn router(&self, generation: &Generation<Greeting>, _: &()) -> Router {
        let greeting = generation.app().greeting.clone();
        Router::new().route("/probe", get(move || async move { greeting }))
    }
}

fn config(greeting: &str) -> Config {
    Config::sqlite()
        .greeting(greeting)
        .set("server.warm_requests", r#"["/probe"]"#)
}

async fn start(site: &Site, gate: &Arc<Gate>) -> Kiln<ProbeApp> {
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    Kiln::start(ProbeApp { gate: gate.clone() }, loaded)
        .await
        .expect("kiln starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_a_root_route_starts_with_the_default_config() {
    // No server.warm_requests: the default must not ask for a route the app lacks.
    let site = Site::new(
        "[pools.main]\nkind = \"sqlite\"\nurl = \"data/kiln.sqlite3\"\n\n[app]\ngreeting = \"hi\"\n",
    );
    let kiln = start(&site, &Arc::default()).await;
    let router = kiln.router().await.expect("a worker attaches");
    assert_eq!(get_in_process(&router, None, "/probe").await.body, "hi");
}

/// Sends a request through the worker's service the moment it is woken,
/// synchronously, from inside whatever woke it.
struct SendOnWake {
    service: Mutex<GenerationService>,
    sent: Mutex<Option<kiln::ResponseFuture>>,
}

impl Wake for SendOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut sent = self.sent.lock().unwrap();
        if sent.is_none() {
            let request = axum::http::Request::get("/probe")
                .body(axum::body::Body::empty())
                .unwrap();
            *sent = Some(self.service.lock().unwrap().call(request));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_woken_by_a_reload_finds_the_workers_on_the_new_generation() {
    let site = Site::new(&config("one").render());
    let kiln = start(&site, &Arc::default()).await;
    let worker = kiln.worker().await.expect("a worker attaches");
    let probe = Arc::new(SendOnWake {
        service: Mutex::new(worker.service()),
        sent: Mutex::new(None),
    });

    let mut generations = kiln.subscribe();
    generations.borrow_and_update();
    let mut changed = Box::pin(generations.changed());
    let waker = Waker::from(probe.clone());
    assert!(
        changed
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending(),
        "no generation yet"
    );

    site.write_config(&config("two").render());
    let outcome = kiln.reload(Trigger::Api).await.expect("the reload applies");
    assert_eq!(outcome.generation, 2);
    let sent = probe.sent.lock().unwrap().take();
    let response = sent.expect("the reload woke the subscriber").await.unwrap();
    assert_eq!(
        response.headers()[kiln::GENERATION_HEADER],
        "2",
        "a request sent when the subscriber was woken ran on the old generation"
    );
    assert!(matches!(
        changed.as_mut().poll(&mut Context::from_waker(&waker)),
        Poll::Ready(Ok(()))
    ));
}

/// Holds the thread that logs `Reloaded` until a patch's attempt is in the
/// history: the point where, were the history recorded after the reload
/// lock was released, a later reload could be recorded first. (kiln logs a
/// reload after releasing the lock; were it logged under the lock, this hook
/// would hold the patch out until its wait timed out.)
struct HoldAfterReloaded<A: App> {
    kiln: Kiln<A>,
}

impl<A: App, S: tracing::Subscriber> tracing_subscriber::Layer<S> for HoldAfterReloaded<A> {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}") == "Reloaded" {
                    self.0 = true;
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            util::wait_until(EMBED_TIMEOUT, "the patch in the history", || {
                self.kiln
                    .history()
                    .iter()
                    .any(|entry| entry.trigger == Trigger::Patch)
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_reloads_in_the_order_they_held_the_lock() {
    let site = Site::new(&config("one").render());
    let gate = Arc::new(Gate::default());
    let kiln = start(&site, &gate).await;

    // A: a slow reload (its prepare waits at the gate), run on a thread of
    // its own whose log hook holds it after it logs `Reloaded`.
    site.write_config(&config("slow").render());
    let slow = {
        let kiln = kiln.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let hook =
                tracing_subscriber::registry().with(HoldAfterReloaded { kiln: kiln.clone() });
            tracing::subscriber::with_default(hook, || runtime.block_on(kiln.reload(Trigger::Api)))
        })
    };
    gate.wait_entered(1).await;

    // B: a quick failure (its If-Match names generation 1), asked for while
    // A holds the reload lock.
    let quick = tokio::spawn({
        let kiln = kiln.clone();
        async move {
            kiln.patch(&json!({"app": {"greeting": "b"}}), Some("\"1\""))
                .await
        }
    });
    gate.open();

    let slow = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap()
        .expect("the slow reload applies");
    assert_eq!(slow.generation, 2);
    assert!(
        matches!(quick.await.unwrap(), Err(ReloadError::Stale { current: 2 })),
        "the patch names generation 1"
    );
    let history: Vec<_> = kiln
        .history()
        .into_iter()
        .map(|entry| (entry.trigger, entry.generation))
        .collect();
    assert_eq!(
        history,
        [(Trigger::Patch, None), (Trigger::Api, Some(2))],
        "newest first: the patch ran after the slow reload"
    );
}

/// `took_ms` counts from the call, including the wait for an earlier
/// reload; the clock is tokio's, paused, so the wait is exact.
#[tokio::test(start_paused = true)]
async fn took_ms_counts_the_wait_for_the_reload_lock() {
    let site = Site::new("[app]\ngreeting = \"one\"\n");
    let gate = Arc::new(Gate::default());
    let kiln = start(&site, &gate).await;
    site.write_config("[app]\ngreeting = \"slow\"\n");
    let slow = tokio::spawn({
        let kiln = kiln.clone();
        async move { kiln.reload(Trigger::Api).await }
    });
    gate.wait_entered(1).await;

    let mut queued = std::pin::pin!(kiln.reload(Trigger::Api));
    assert!(
        futures_util::poll!(queued.as_mut()).is_pending(),
        "it waits for the slow one"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    gate.open();
    assert_eq!(
        slow.await
            .unwrap()
            .expect("the slow reload applies")
            .generation,
        2
    );
    let queued = queued.await.expect("the queued reload applies");
    assert_eq!(queued.generation, 3);
    assert!(
        queued.took >= Duration::from_secs(5),
        "took {:?}",
        queued.took
    );
}

/// Without kiln's log subscriber (this test binary installs none through
/// `kiln::logging::init`), kiln cannot apply `log.level`: it says so.
#[tokio::test]
async fn a_level_change_is_refused_when_the_subscriber_is_not_kilns() {
    let site = Site::new(&config("one").render());
    let kiln = start(&site, &Arc::default()).await;
    site.write_config(&config("two").set_str("log.level", "debug").render());
    let refused = kiln.reload(Trigger::Api).await.unwrap_err();
    assert!(matches!(refused, ReloadError::LogNotManaged), "{refused}");
    assert!(
        refused.to_string().contains("kiln::logging::init"),
        "{refused}"
    );
    assert_eq!(kiln.current().id(), 1);
    assert_eq!(kiln.current().app().greeting, "one");
}
