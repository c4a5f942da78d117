//! A custom resource's life in an embedded kiln, counted by an instrumented
//! resource: built and warmed once at start, reused by a reload that leaves
//! its section alone, rebuilt and warmed by one that changes it, and dropped
//! once the last request holding the old generation ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use kiln::{App, BoxError, Generation, Kiln, Resource, Trigger};
use serde::Deserialize;

use crate::util::{Config, Gate, Greeting, Site, get_in_process, wait_until_async};

static BUILT: AtomicUsize = AtomicUsize::new(0);
static WARMED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountedConfig {
    label: String,
}

/// Cheap to clone: every clone shares one `Tracked`, dropped with the last.
#[derive(Clone)]
struct Counted(Arc<Tracked>);

struct Tracked {
    serial: usize,
    label: String,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

impl Resource for Counted {
    type Config = CountedConfig;

    async fn build(_name: &str, config: CountedConfig) -> Result<Self, BoxError> {
        let serial = BUILT.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Counted(Arc::new(Tracked {
            serial,
            label: config.label,
        })))
    }

    async fn warm(&self) -> Result<(), BoxError> {
        WARMED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// `/` answers the resource's serial and label; `/hold` waits at the gate.
struct Holder {
    gate: Arc<Gate>,
}

impl App for Holder {
    type Config = Greeting;
    type State = ();

    async fn prepare(&self, _: &Generation<Greeting>, _: Option<&()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn router(&self, generation: &Generation<Greeting>, _: &()) -> Router {
        let counted = generation
            .resource_arc::<Counted>("counted")
            .expect("registered");
        assert!(
            std::ptr::eq(
                &*counted,
                generation
                    .resource::<Counted>("counted")
                    .expect("registered")
            ),
            "resource_arc and resource name the same resource"
        );
        let held = counted.clone();
        let gate = self.gate.clone();
        Router::new()
            .route(
                "/",
                get(move || async move { format!("{} {}", counted.0.serial, counted.0.label) }),
            )
            .route(
                "/hold",
                get(move || async move {
                    gate.pass().await;
                    format!("{} {}", held.0.serial, held.0.label)
                }),
            )
    }
}

fn config(greeting: &str, label: &str) -> String {
    Config::sqlite()
        .greeting(greeting)
        .set_str("resources.counted.label", label)
        .render()
}

fn counts() -> [usize; 3] {
    [&BUILT, &WARMED, &DROPPED].map(|count| count.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_is_built_once_reused_rebuilt_on_change_and_dropped_after_its_last_request() {
    let site = Site::new(&config("hello", "one"));
    let gate = Arc::new(Gate::default());
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = Kiln::builder(Holder { gate: gate.clone() })
        .resource::<Counted>("counted")
        .start(loaded)
        .await
        .expect("kiln starts");
    let app = Router::new().nest("/app", kiln.router().await.expect("a worker attaches"));
    assert_eq!(counts(), [1, 1, 0], "[built, warmed, dropped] after start");
    assert_eq!(get_in_process(&app, None, "/app").await.body, "1 one");

    // A request holds generation 1 (and resource #1) across both reloads.
    let held = {
        let app = app.clone();
        tokio::spawn(async move { get_in_process(&app, None, "/app/hold").await })
    };
    gate.wait_entered(1).await;

    site.write_config(&config("hello again", "one"));
    let outcome = kiln.reload(Trigger::Api).await.expect("the reload applies");
    assert_eq!(outcome.changed, ["app.greeting"]);
    assert!(
        !outcome.rebuilt.contains(&"counted".to_owned()),
        "{outcome:?}"
    );
    assert_eq!(
        counts(),
        [1, 1, 0],
        "an unrelated reload reuses the resource"
    );
    assert_eq!(get_in_process(&app, None, "/app").await.body, "1 one");

    site.write_config(&config("hello again", "two"));
    let outcome = kiln.reload(Trigger::Api).await.expect("the reload applies");
    assert_eq!(outcome.changed, ["resources.counted.label"]);
    assert_eq!(outcome.rebuilt, ["counted"]);
    assert_eq!(
        counts(),
        [2, 2, 0],
        "rebuilt and warmed; the old one is still held"
    );
    let reply = get_in_process(&app, None, "/app").await;
    assert_eq!(reply.body, "2 two");
    assert_eq!(reply.generation(), 3);

    gate.open();
    let reply = held.await.expect("the held request");
    assert_eq!(reply.body, "1 one", "the held request kept its generation");
    assert_eq!(reply.generation(), 1);
    wait_until_async("the old resource to be dropped", || counts()[2] == 1).await;
    assert_eq!(counts(), [2, 2, 1]);
}
