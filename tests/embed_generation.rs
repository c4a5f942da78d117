//! A handler reaches the generation its request runs on with the
//! `RequestGeneration<C>` extractor, embedded as on kiln's own workers, and
//! keeps it across a reload that happens meanwhile; asked for with the
//! wrong config type or outside kiln, it answers a JSON `500` saying why.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use kiln::{App, BoxError, Generation, Kiln, RequestGeneration, Trigger};

use crate::util::{Config, EMBED_TIMEOUT, Gate, Greeting, Site, get_in_process};

/// `/` answers the generation's id and greeting from the extractor; `/hold`
/// does the same after waiting at the gate; `/wrong` asks for the wrong
/// config type.
struct FromExtension {
    gate: Arc<Gate>,
}

impl App for FromExtension {
    type Config = Greeting;
    type State = ();

    async fn prepare(&self, _: &Generation<Greeting>, _: Option<&()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn router(&self, _: &Generation<Greeting>, _: &()) -> Router {
        let gate = self.gate.clone();
        let answer = |generation: &Generation<Greeting>| {
            format!("{} {}", generation.id(), generation.app().greeting)
        };
        Router::new()
            .route(
                "/",
                get(move |generation: RequestGeneration<Greeting>| async move {
                    answer(&generation)
                }),
            )
            .route(
                "/hold",
                get(move |generation: RequestGeneration<Greeting>| async move {
                    gate.pass().await;
                    answer(&generation.0)
                }),
            )
            .route("/wrong", get(wrong_type))
    }
}

async fn wrong_type(RequestGeneration(generation): RequestGeneration<()>) -> String {
    generation.id().to_string()
}

#[tokio::test]
async fn the_extractor_refuses_the_wrong_config_type_and_requests_kiln_does_not_serve() {
    let config = Config::sqlite();
    let site = Site::new(&config.render());
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = Kiln::start(
        FromExtension {
            gate: Arc::default(),
        },
        loaded,
    )
    .await
    .expect("kiln starts");
    let app = kiln.router().await.expect("a worker attaches");
    let wrong = get_in_process(&app, None, "/wrong").await;
    assert_eq!(wrong.status, 500, "{wrong:?}");
    assert!(
        wrong.body.contains("does not match the app's config type"),
        "{wrong:?}"
    );

    let outside = Router::new().route("/", get(wrong_type));
    let outside = get_in_process(&outside, None, "/").await;
    assert_eq!(outside.status, 500, "{outside:?}");
    assert!(
        outside
            .body
            .contains(r#""error":"kiln::RequestGeneration is extracted only"#),
        "{outside:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_extracts_the_generation_its_request_runs_on() {
    let config = Config::sqlite();
    let site = Site::new(&config.clone().greeting("first").render());
    let gate = Arc::new(Gate::default());
    let loaded = kiln::load_config(&site.config_path()).expect("valid config");
    let kiln = Kiln::start(FromExtension { gate: gate.clone() }, loaded)
        .await
        .expect("kiln starts");
    let app = Router::new().nest("/app", kiln.router().await.expect("a worker attaches"));
    assert_eq!(get_in_process(&app, None, "/app").await.body, "1 first");

    let held = {
        let app = app.clone();
        tokio::spawn(async move { get_in_process(&app, None, "/app/hold").await })
    };
    gate.wait_entered(1).await;
    site.write_config(&config.greeting("second").render());
    kiln.reload(Trigger::Api).await.expect("the reload applies");
    assert_eq!(get_in_process(&app, None, "/app").await.body, "2 second");
    gate.open();
    let held = tokio::time::timeout(EMBED_TIMEOUT, held)
        .await
        .expect("the held request ends")
        .expect("its task ends");
    assert_eq!(held.body, "1 first", "the held request kept its generation");
}
