//! The demo app's notes API, the same scenarios on SQLite and on PostgreSQL:
//! create, read, list, and bad input that stores nothing.

use serde_json::{Value, json};

use crate::util::{self, Config, Server};

fn on_sqlite(scenario: fn(&Server)) {
    scenario(&Server::start(&Config::sqlite().render()));
}

fn on_postgres(scenario: fn(&Server)) {
    let pg = util::postgres();
    let server = Server::start(&Config::postgres(&pg.url()).render());
    scenario(&server);
}

/// Creates a note, asserting the 201 answer, and returns its id.
fn create(server: &Server, text: &str) -> i64 {
    let reply = server.post_json("/notes", &json!({ "text": text }));
    assert_eq!(reply.status, 201, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["text"], json!(text), "{reply:?}");
    body["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer id: {reply:?}"))
}

/// `GET /notes{query}` as (id, text) pairs.
fn list(server: &Server, query: &str) -> Vec<(i64, String)> {
    let reply = server.get(&format!("/notes{query}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {reply:?}"))
        .iter()
        .map(|n| {
            (
                n["id"].as_i64().unwrap(),
                n["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Asserts a rejection with a JSON `{"error": "…"}` body.
fn assert_json_error(reply: &util::Reply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    reply.generation(); // error answers carry X-Config-Generation too
    let body: Value = reply.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{reply:?}"
    );
}

fn create_and_get(server: &Server) {
    assert!(list(server, "").is_empty(), "a fresh database has no notes");
    let text = "héllo \"quoted\" 🦀\nsecond line";
    let id = create(server, text);
    let reply = server.get(&format!("/notes/{id}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(
        (body["id"].as_i64(), &body["text"]),
        (Some(id), &json!(text)),
        "{reply:?}"
    );

    let missing = server.get(&format!("/notes/{}", id + 1000));
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.generation(), 1, "{missing:?}");
}

fn list_newest_first_with_limits(server: &Server) {
    let ids: Vec<i64> = (0..105)
        .map(|i| create(server, &format!("note {i}")))
        .collect();
    let mut newest_first: Vec<(i64, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, format!("note {i}")))
        .collect();
    newest_first.reverse();

    assert_eq!(
        list(server, ""),
        newest_first[..20],
        "default limit 20, newest first"
    );
    assert_eq!(list(server, "?limit=2"), newest_first[..2]);
    assert_eq!(list(server, "?limit=100"), newest_first[..100]);
    // "At most 100": clamping and refusing are both fair readings.
    let over = server.get("/notes?limit=101");
    match over.status {
        200 => assert_eq!(
            list(server, "?limit=101"),
            newest_first[..100],
            "limit above 100"
        ),
        400 | 422 => {}
        _ => panic!("limit=101: {over:?}"),
    }
}

fn bad_input_stores_nothing(server: &Server) {
    create(server, "existing");
    let before = list(server, "?limit=100");

    assert_json_error(&server.post_json("/notes", &json!({ "text": "" })), 422);
    let too_long = "x".repeat(10_001);
    assert_json_error(
        &server.post_json("/notes", &json!({ "text": too_long })),
        422,
    );
    for malformed in [r#"{"text": "#, "not json", r#"{"text": "a"} trailing"#] {
        assert_json_error(&server.post_raw("/notes", malformed), 400);
    }
    assert_eq!(
        list(server, "?limit=100"),
        before,
        "rejected notes were stored"
    );

    // The limit counts characters, not bytes: 10,000 two-byte characters fit.
    create(server, &"x".repeat(10_000));
    create(server, &"é".repeat(10_000));
}

#[test]
fn create_and_get_on_sqlite() {
    on_sqlite(create_and_get);
}

#[test]
fn create_and_get_on_postgres() {
    on_postgres(create_and_get);
}

#[test]
fn list_newest_first_with_limits_on_sqlite() {
    on_sqlite(list_newest_first_with_limits);
}

#[test]
fn list_newest_first_with_limits_on_postgres() {
    on_postgres(list_newest_first_with_limits);
}

#[test]
fn bad_input_stores_nothing_on_sqlite() {
    on_sqlite(bad_input_stores_nothing);
}

#[test]
fn bad_input_stores_nothing_on_postgres() {
    on_postgres(bad_input_stores_nothing);
}

#[test]
fn sqlite_file_lives_next_to_the_config_file() {
    let server = Server::start(&Config::sqlite().render());
    create(&server, "on disk");
    assert!(
        server.site.path("data/kiln.sqlite3").is_file(),
        "relative url resolves against the config file's folder"
    );
    assert!(
        !server.site.cwd().join("data").exists(),
        "nothing created under the working directory"
    );
}
