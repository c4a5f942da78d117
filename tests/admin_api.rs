//! The admin API's contract: its OpenAPI document (`GET /admin/openapi.json`)
//! and the one error shape, `{"error", "generation", ...}`, for every error
//! it answers, axum's own rejections, unknown paths and wrong methods
//! included. `.ci/schemathesis.sh` fuzzes the same document; each of its
//! findings has a test here.

use serde_json::{Value, json};

use crate::util::{Config, Reply, Server, Site, agent, call, free_addr};

/// Asserts `reply` is `status` with the documented error body naming the
/// generation that serves, and returns the error text.
fn assert_error(reply: &Reply, status: u16, generation: u64) -> String {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    let body = reply.json();
    assert_eq!(body["generation"], json!(generation), "{reply:?}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "no error text: {reply:?}");
    error.to_owned()
}

/// Request headers, name and value.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// An admin request with exactly these headers and body.
fn admin_request(
    server: &Server,
    method: &str,
    path: &str,
    headers: Headers,
    body: Option<&str>,
) -> Reply {
    call(&agent(), method, &server.admin_url(path), headers, body).expect("the admin API answers")
}

#[test]
fn unknown_paths_and_wrong_methods_answer_json_errors() {
    let server = Server::start(&Config::sqlite().render());
    let error = assert_error(&server.admin_get("/admin/nope"), 404, 1);
    assert!(error.contains("/nope"), "{error}");

    for (method, path, allowed) in [
        ("GET", "/admin/reload", "POST"),
        ("DELETE", "/admin/config", "GET"),
        ("POST", "/admin/status", "GET"),
    ] {
        let reply = admin_request(&server, method, path, &[], (method != "GET").then_some(""));
        let error = assert_error(&reply, 405, 1);
        assert!(error.contains(method), "{method} {path}: {error}");
        let allow = reply.header("allow").unwrap_or_default();
        assert!(allow.contains(allowed), "{method} {path}: {reply:?}");
    }
}

#[test]
fn axum_rejections_of_a_patch_answer_json_errors_and_change_nothing() {
    let server = Server::start(&Config::sqlite().render());
    let before = server.site.read_config();
    let json = ("content-type", "application/json");
    let cases: [(&str, Headers, Option<&str>, u16); 5] = [
        ("no body, no content type", &[], None, 415),
        (
            "wrong content type",
            &[("content-type", "text/plain")],
            Some("{}"),
            415,
        ),
        ("malformed JSON", &[json], Some("{\"app\":"), 400),
        ("empty JSON body", &[json], Some(""), 400),
        // One byte over axum's 2 MiB limit: the server has read all of it
        // before it answers, so the client's write is never cut short.
        ("too large", &[json], Some(&*"x".repeat((2 << 20) + 1)), 413),
    ];
    for (what, headers, body, status) in cases {
        let reply = admin_request(&server, "PATCH", "/admin/config", headers, body);
        let error = assert_error(&reply, status, 1);
        assert!(error.contains("JSON merge patch"), "{what}: {error}");
    }
    assert_eq!(server.site.read_config(), before, "the file changed");
    assert_eq!(server.admin_get("/admin/status").json()["generation"], 1);
}

/// schemathesis: a body that is not a JSON object, sent with a stale (or no)
/// `If-Match`, was answered 412 as if it were a stale patch.
#[test]
fn a_patch_that_is_not_an_object_is_refused_before_if_match() {
    let server = Server::start(&Config::sqlite().render());
    for body in ["[null, null]", "1", "\"app\"", "null"] {
        let reply = server.patch_config_raw(body, &[("if-match", "\"0\"")]);
        let error = assert_error(&reply, 422, 1);
        assert!(error.contains("object"), "{body}: {error}");
    }
}

/// schemathesis: an `If-Match` that is no ETag (`null`, empty) was answered
/// 412, as if the configuration had changed.
#[test]
fn an_if_match_that_is_not_an_etag_list_is_a_400() {
    let server = Server::start(&Config::sqlite().render());
    let patch = json!({"app": {"greeting": "Hi"}}).to_string();
    for tag in ["null", "", "\"1", "W/", "1,,2", "abc"] {
        let reply = server.patch_config_raw(&patch, &[("if-match", tag)]);
        let error = assert_error(&reply, 400, 1);
        assert!(error.contains("If-Match"), "{tag:?}: {error}");
    }
    // What the document's pattern allows is taken.
    for (tag, generation) in [("\"1\"", 2), ("W/\"2\"", 3), ("9, 3", 4), ("*", 5)] {
        let reply = server.patch_config_raw(&patch, &[("if-match", tag)]);
        assert_eq!(reply.status, 200, "{tag:?}: {reply:?}");
        assert_eq!(reply.json()["generation"], generation, "{tag:?}: {reply:?}");
    }
}

/// Every `(method, path)` the document lists, with the statuses each
/// operation documents.
fn operations(doc: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let statuses = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .cloned()
                .collect();
            operations.push((method.to_uppercase(), path.clone(), statuses));
        }
    }
    operations.sort();
    operations
}

#[test]
fn openapi_document_describes_every_admin_route_and_its_errors() {
    let server = Server::start(&Config::sqlite().render());
    let reply = server.admin_get("/admin/openapi.json");
    assert_eq!(reply.status, 200, "{reply:?}");
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0", "{doc}");
    assert_eq!(doc["servers"], json!([{"url": "/admin"}]), "{doc}");
    assert!(doc.get("security").is_none(), "no token, no scheme: {doc}");

    let listed: Vec<_> = operations(&doc)
        .into_iter()
        .map(|(method, path, statuses)| {
            // Every route can be refused by the guard and the token.
            for status in ["401", "403", "429"] {
                assert!(
                    statuses.contains(&status.to_owned()),
                    "{method} {path}: {statuses:?}"
                );
            }
            (method, path)
        })
        .collect();
    let expected = [
        ("GET", "/config"),
        ("GET", "/fleet"),
        ("GET", "/history"),
        ("GET", "/log-level"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/status"),
        ("PATCH", "/config"),
        ("POST", "/fleet/publish"),
        ("POST", "/fleet/rollback"),
        ("POST", "/reload"),
        ("POST", "/restart"),
        ("POST", "/rollback"),
        ("PUT", "/log-level"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(listed, expected);
    // Each listed route is served where the document says (a restart would
    // leave a new process behind: tests/restart.rs calls it).
    for (method, path) in expected.iter().filter(|(_, p)| p != "/restart") {
        let reply = admin_request(&server, method, &format!("/admin{path}"), &[], None);
        assert!(
            ![404, 405].contains(&reply.status),
            "{method} {path}: {reply:?}"
        );
    }

    let patch = &doc["paths"]["/config"]["patch"];
    let statuses: Vec<_> = patch["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .cloned()
        .collect();
    for status in [
        "200", "400", "409", "412", "413", "415", "422", "500", "503",
    ] {
        assert!(
            statuses.contains(&status.to_owned()),
            "PATCH /config: {statuses:?}"
        );
    }
    assert_eq!(
        patch["requestBody"]["content"]["application/json"]["schema"]["type"], "object",
        "{patch}"
    );
    assert_eq!(
        patch["responses"]["412"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    // A JSON body can be refused as too large or not JSON, wherever it is taken.
    let put = &doc["paths"]["/log-level"]["put"]["responses"];
    for status in ["200", "400", "409", "413", "415", "422"] {
        assert!(put.get(status).is_some(), "PUT /log-level {status}: {put}");
    }
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error", "generation"]), "{error}");
    for field in ["error", "generation", "key", "keys", "resource"] {
        assert!(error["properties"].get(field).is_some(), "{field}: {error}");
    }
}

#[test]
fn openapi_document_needs_the_token_and_declares_it() {
    let token = "tok-0a5e-openapi";
    let server = Server::start_with(&Config::sqlite().render(), &[("KILN__ADMIN__TOKEN", token)]);
    let denied = server.admin_call("GET", "/admin/openapi.json", None);
    assert_error(&denied, 401, 1);
    let doc = server.admin_get("/admin/openapi.json").json();
    assert_eq!(doc["security"], json!([{"token": []}]), "{doc}");
    assert_eq!(
        doc["components"]["securitySchemes"]["token"],
        json!({"type": "http", "scheme": "bearer"}),
        "{doc}"
    );
}

#[test]
fn embedded_openapi_document_names_where_it_is_nested() {
    let site = Site::new(&Config::sqlite().greeting("Hello, embedded").render());
    let listen = free_addr().to_string();
    let server = Server::start_example("embed", site, &[&listen]);
    let reply = call(&agent(), "GET", &server.url("/ops/openapi.json"), &[], None)
        .expect("the example answers");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["servers"],
        json!([{"url": "/ops"}]),
        "{reply:?}"
    );
    let missing =
        call(&agent(), "GET", &server.url("/ops/nope"), &[], None).expect("the example answers");
    assert_error(&missing, 404, 1);
}

/// A stale change answered by the embedding app's own route (through
/// `ReloadError::at`) is the admin API's answer: 412, the same body.
#[test]
fn embed_answers_a_stale_change_like_the_admin_api() {
    let site = Site::new(&Config::sqlite().greeting("Hello, embedded").render());
    let listen = free_addr().to_string();
    let token = "tok-7c1d-stale";
    let server =
        Server::start_example_with("embed", site, &[&listen], &[("KILN__ADMIN__TOKEN", token)]);
    let bearer = format!("Bearer {token}");
    let admin = call(
        &agent(),
        "PATCH",
        &server.url("/ops/config"),
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
            ("if-match", "\"0\""),
        ],
        Some(r#"{"app": {"greeting": "Hi"}}"#),
    )
    .expect("the example answers");
    let own = call(
        &agent(),
        "PUT",
        &server.url("/greeting"),
        &[("if-match", "\"0\"")],
        Some("Hi"),
    )
    .expect("the example answers");
    assert_error(&admin, 412, 1);
    assert_eq!(
        (own.status, own.json()),
        (admin.status, admin.json()),
        "{own:?}"
    );
    // And a current one applies.
    let applied = call(
        &agent(),
        "PUT",
        &server.url("/greeting"),
        &[("if-match", "\"1\"")],
        Some("Hi"),
    )
    .expect("the example answers");
    assert_eq!(applied.status, 200, "{applied:?}");
    assert_eq!(server.get("/api").body, "Hi");
}
