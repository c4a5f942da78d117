//! An `App::router`, `App::prepare` or resource factory that panics refuses
//! the reload (503 naming what panicked, nothing applied) and never takes
//! the process down; at start-up the same panics are a clean `StartError`.

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use kiln::{App, BoxError, Generation, Kiln, Resource, Trigger};
use serde::Deserialize;

use crate::util::{Config, Greeting, Site, get_in_process, send};

/// Panics in `prepare` or `router` when the greeting asks it to.
struct Panicky;

impl App for Panicky {
    type Config = Greeting;
    type State = ();

    async fn prepare(
        &self,
        generation: &Generation<Greeting>,
        _: Option<&()>,
    ) -> Result<(), BoxError> {
        if generation.app().greeting == "panic in prepare" {
            panic!("prepare was told to panic");
        }
        Ok(())
    }

    fn router(&self, generation: &Generation<Greeting>, _: &()) -> Router {
        let greeting = generation.app().greeting.clone();
        if greeting == "panic in router" {
            panic!("router was told to panic");
        }
        Router::new().route("/", get(move || async move { greeting }))
    }
}

/// A resource whose factory panics when its label says so.
struct Fragile;

#[derive(Deserialize)]
struct FragileConfig {
    #[serde(default)]
    label: String,
}

impl Resource for Fragile {
    type Config = FragileConfig;

    async fn build(_name: &str, config: FragileConfig) -> Result<Self, BoxError> {
        if config.label == "panic" {
            panic!("the fragile resource was told to panic");
        }
        Ok(Fragile)
    }
}

fn config(greeting: &str, label: &str) -> String {
    Config::sqlite()
        .greeting(greeting)
        .set("server.warm_requests", "[]")
        .set_str("resources.fragile.label", label)
        .render()
}

async fn admin_reload(admin: &Router) -> crate::util::Reply {
    let request = Request::post("/reload")
        .header("host", "localhost")
        .body(Body::empty())
        .expect("a valid request");
    send(admin, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_building_a_reload_refuses_it_and_keeps_serving() {
    let site = Site::new(&config("steady", "ok"));
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = Kiln::builder(Panicky)
        .resource::<Fragile>("fragile")
        .start(loaded)
        .await
        .expect("kiln starts");
    let app = kiln.router().await.expect("a worker attaches");
    // Loopback-only in-process calls: no token needed for this test.
    let admin = kiln.admin_router_unauthenticated();

    for (greeting, label, what) in [
        ("panic in router", "ok", "App::router"),
        ("panic in prepare", "ok", "App::prepare"),
        ("steady", "panic", "resource fragile"),
    ] {
        site.write_config(&config(greeting, label));
        let error = kiln
            .reload(Trigger::Api)
            .await
            .expect_err("a panicking build is refused");
        let text = error.to_string();
        assert!(
            text.contains(what) && text.contains("panicked"),
            "the error names what panicked ({what}): {text}"
        );
        let reply = admin_reload(&admin).await;
        assert_eq!(reply.status, 503, "{reply:?}");
        let body = reply.json();
        let message = body["error"].as_str().expect("an error message");
        assert!(
            message.contains(what) && message.contains("panicked"),
            "{body}"
        );
        assert_eq!(body["generation"], 1, "nothing applied: {body}");
        // The current generation keeps serving.
        let root = get_in_process(&app, None, "/").await;
        assert_eq!((root.status, root.body.as_str()), (200, "steady"));
        assert_eq!(kiln.current().id(), 1);
    }

    // A good file applies as usual afterwards.
    site.write_config(&config("recovered", "ok"));
    kiln.reload(Trigger::Api).await.expect("the reload applies");
    assert_eq!(get_in_process(&app, None, "/").await.body, "recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_at_start_up_is_a_start_error() {
    for (greeting, label, what) in [
        ("panic in prepare", "ok", "App::prepare"),
        ("steady", "panic", "resource fragile"),
    ] {
        let site = Site::new(&config(greeting, label));
        let loaded = kiln::load_config(&site.config_path()).expect("valid config");
        let started = tokio::spawn(
            Kiln::builder(Panicky)
                .resource::<Fragile>("fragile")
                .start(loaded),
        )
        .await
        .expect("start-up returns instead of panicking");
        let error = started.expect_err("start-up fails");
        assert!(
            error.to_string().contains(what) && error.to_string().contains("panicked"),
            "{error}"
        );
    }
    // A router that panics while a worker attaches.
    let site = Site::new(&config("panic in router", "ok"));
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = Kiln::builder(Panicky)
        .resource::<Fragile>("fragile")
        .start(loaded)
        .await
        .expect("start-up builds no router");
    let attach = {
        let kiln = kiln.clone();
        tokio::spawn(async move { kiln.router().await.map(drop) })
    };
    let error = attach
        .await
        .expect("attaching returns instead of panicking")
        .expect_err("the router panicked");
    assert!(
        error.to_string().contains("App::router") && error.to_string().contains("panicked"),
        "{error}"
    );
}
