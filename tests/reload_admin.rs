//! `POST /admin/reload`: a success swaps the whole generation at once; every
//! failure class answers its code, names the cause and applies nothing; plus
//! the shapes of `/admin/status` and `/admin/config`.

use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{self, Config, PgProxy, Server};

const STABLE: &str = "stable greeting";

/// Every rejected file also changes the greeting, so any partial application
/// would show.
const MUST_NOT_APPLY: &str = "must not apply";

/// Short warm timeout so the unreachable-database case fails fast.
fn base() -> Config {
    Config::sqlite()
        .greeting(STABLE)
        .set_str("server.warm_timeout", "5s")
}

/// Writes `bad`, reloads, and checks the answer is `status` with the current
/// generation, and that the old generation keeps serving untouched. Returns
/// the answer's JSON for case-specific checks.
fn assert_rejected(server: &Server, bad: &str, status: u16) -> Value {
    let before = server.status_generation();
    server.site.write_config(bad);
    let body = util::assert_refused(&server.reload(), status, before);
    for root in [server.get("/"), server.get_on_new_connection("/")] {
        assert_eq!(
            root.body, STABLE,
            "old greeting keeps serving after a failed reload"
        );
        assert_eq!(
            root.generation(),
            before,
            "generation unchanged after a failed reload"
        );
    }
    assert_eq!(server.status_generation(), before);
    body
}

/// A good reload after failures gets exactly the next generation id.
fn assert_next_reload_succeeds(server: &Server) {
    let before = server.status_generation();
    server
        .site
        .write_config(&base().greeting("recovered").render());
    let reply = server.reload();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["generation"],
        json!(before + 1),
        "failed reloads consume no id: {reply:?}"
    );
    let root = server.get("/");
    assert_eq!(
        (root.body.as_str(), root.generation()),
        ("recovered", before + 1)
    );
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[test]
fn greeting_change_reaches_every_connection() {
    let server = Server::start(&Config::sqlite().greeting("one").render());
    let first = server.get("/");
    assert_eq!((first.body.as_str(), first.generation()), ("one", 1));

    server
        .site
        .write_config(&Config::sqlite().greeting("two").render());
    let reply = server.reload();
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["generation"], json!(2), "{body}");
    assert_eq!(body["previous"], json!(1), "{body}");
    assert_eq!(
        util::json_strings(&body["changed"]),
        ["app.greeting"],
        "{body}"
    );
    assert!(
        util::json_strings(&body["rebuilt"]).is_empty(),
        "no pool section changed: {body}"
    );
    assert!(body["took_ms"].is_u64(), "{body}");

    // The very next request sees it: on the kept-alive connection that served
    // generation 1, and on new connections (which reach either worker).
    let again = server.get("/");
    assert_eq!((again.body.as_str(), again.generation()), ("two", 2));
    for _ in 0..8 {
        let fresh = server.get_on_new_connection("/");
        assert_eq!((fresh.body.as_str(), fresh.generation()), ("two", 2));
    }
}

#[test]
fn pool_change_rebuilds_that_pool_and_keeps_data() {
    let server = Server::start(&Config::sqlite().render());
    let created = server.post_json("/notes", &json!({"text": "kept"}));
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.json()["id"].as_i64().unwrap();

    server
        .site
        .write_config(&Config::sqlite().set("pools.main.max_size", "6").render());
    let reply = server.reload();
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(util::json_strings(&body["rebuilt"]), ["main"], "{body}");
    assert!(
        util::json_strings(&body["changed"]).contains(&"pools.main.max_size"),
        "{body}"
    );

    let status = server.admin_get("/admin/status").json();
    assert_eq!(status["pools"]["main"]["max_size"], json!(6), "{status}");
    let note = server.get(&format!("/notes/{id}"));
    assert_eq!(
        note.status, 200,
        "a note stored before the rebuild is still there: {note:?}"
    );
    assert_eq!(note.generation(), 2);
    let after = server.post_json("/notes", &json!({"text": "on the new pool"}));
    assert_eq!(after.status, 201, "{after:?}");
}

#[test]
fn unchanged_pool_keeps_its_connections_and_replaced_pool_closes() {
    let pg = util::postgres();
    let proxy = PgProxy::start(Duration::ZERO);
    let config = |max_size: &str, greeting: &str| {
        Config::postgres(&pg.url_at(&proxy.addr().to_string()))
            .set("pools.main.max_size", max_size)
            .set("pools.main.warm", "4")
            .greeting(greeting)
            .render()
    };
    let server = Server::start(&config("4", "a"));
    assert_eq!(proxy.accepted(), 4, "warm-up opens `warm` connections");

    // Only the greeting changes: the pool is carried over, connections and all.
    server.site.write_config(&config("4", "b"));
    let reply = server.reload();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(server.get("/notes").status, 200);
    assert_eq!(
        proxy.accepted(),
        4,
        "a greeting reload opened database connections"
    );

    // The pool section changes while a database request of generation 2 is
    // in flight (held by a table lock): a new pool is warmed, and the old one
    // stays open until that request ends, then closes.
    let lock = pg.lock_table("notes");
    let held = {
        let url = server.url("/notes");
        thread::spawn(move || util::call(&util::agent(), "GET", &url, &[], None))
    };
    util::wait_until(
        Duration::from_secs(30),
        "the request to wait for the table lock",
        || pg.waiting_for_locks() > 0,
    );
    server.site.write_config(&config("5", "b"));
    let reply = server.reload();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        proxy.accepted(),
        8,
        "the rebuilt pool warmed 4 new connections"
    );
    // A window far longer than a pool closing at the swap would need
    // (its three idle connections go within ~30 ms).
    for _ in 0..200 {
        assert_eq!(server.get("/").generation(), 3);
    }
    assert_eq!(
        proxy.live(),
        8,
        "the replaced pool closed while a request of its generation was in flight"
    );
    drop(lock);
    let held = held.join().expect("the held request").expect("an answer");
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(held.generation(), 2, "it ran on its own generation");
    util::wait_until(
        Duration::from_secs(30),
        "the replaced pool's connections to close",
        || proxy.live() == 4,
    );
}

#[test]
fn syntax_error_is_rejected() {
    let server = Server::start(&base().render());
    let bad = base()
        .greeting(MUST_NOT_APPLY)
        .render()
        .replace("[app]", "[app");
    let body = assert_rejected(&server, &bad, 422);
    assert!(
        error_of(&body).contains("kiln.toml"),
        "error names the file: {body}"
    );
    assert_next_reload_succeeds(&server);
}

#[test]
fn unknown_key_is_rejected() {
    let server = Server::start(&base().render());
    let bad = base()
        .greeting(MUST_NOT_APPLY)
        .set_str("pools.main.colour", "red");
    let body = assert_rejected(&server, &bad.render(), 422);
    assert!(
        error_of(&body).contains("colour"),
        "error names the key: {body}"
    );
    assert!(
        body["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("pools.main")),
        "key names where: {body}"
    );
    assert_next_reload_succeeds(&server);
}

#[test]
fn wrong_type_is_rejected() {
    let server = Server::start(&base().render());
    let bad = base()
        .greeting(MUST_NOT_APPLY)
        .set_str("pools.main.max_size", "eight");
    let body = assert_rejected(&server, &bad.render(), 422);
    assert_eq!(body["key"], json!("pools.main.max_size"), "{body}");
    assert!(error_of(&body).contains("pools.main.max_size"), "{body}");
    assert_next_reload_succeeds(&server);
}

#[test]
fn out_of_range_value_is_rejected() {
    let server = Server::start(&base().render());
    let bad = base()
        .greeting(MUST_NOT_APPLY)
        .set("pools.main.max_size", "0");
    let body = assert_rejected(&server, &bad.render(), 422);
    assert_eq!(body["key"], json!("pools.main.max_size"), "{body}");
    assert!(error_of(&body).contains("pools.main.max_size"), "{body}");
    assert_next_reload_succeeds(&server);
}

#[test]
fn warm_above_max_size_is_rejected() {
    let server = Server::start(&base().render());
    let bad = base()
        .greeting(MUST_NOT_APPLY)
        .set("pools.main.max_size", "4")
        .set("pools.main.warm", "9");
    let body = assert_rejected(&server, &bad.render(), 422);
    assert_eq!(body["key"], json!("pools.main.warm"), "{body}");
    assert_next_reload_succeeds(&server);
}

#[test]
fn unreachable_database_is_rejected_with_503() {
    let server = Server::start(&base().render());
    let refusing = util::ClosedPort::new();
    let closed = refusing.addr();
    let bad = base()
        .greeting(MUST_NOT_APPLY)
        .set_str("pools.main.kind", "postgres")
        .set_str(
            "pools.main.url",
            &format!("postgres://postgres@{closed}/test"),
        );
    let body = assert_rejected(&server, &bad.render(), 503);
    assert_eq!(body["resource"], json!("main"), "{body}");
    assert!(
        error_of(&body).contains("main"),
        "error names the pool: {body}"
    );
    assert_next_reload_succeeds(&server);
}

#[test]
fn restart_only_keys_are_rejected_with_409() {
    let server = Server::start(&base().render());
    let workers = base().greeting(MUST_NOT_APPLY).set("server.workers", "3");
    let body = assert_rejected(&server, &workers.render(), 409);
    assert_eq!(
        util::json_strings(&body["keys"]),
        ["server.workers"],
        "{body}"
    );
    assert!(
        error_of(&body).contains("`kiln restart`"),
        "the refusal says what applies them: {body}"
    );

    let (main, admin) = util::free_addr_pair();
    let all = workers.listen_on(main, admin);
    let body = assert_rejected(&server, &all.render(), 409);
    let mut keys = util::json_strings(&body["keys"]);
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["admin.listen", "server.listen", "server.workers"],
        "{body}"
    );
    assert_next_reload_succeeds(&server);
}

#[test]
fn status_and_config_describe_the_live_generation() {
    let server = Server::start(&Config::sqlite().greeting("shapes").render());

    let status = server.admin_get("/admin/status");
    assert_eq!(status.status, 200, "{status:?}");
    let s = status.json();
    assert_eq!(s["generation"], json!(1), "{s}");
    // RFC 3339 in UTC to the second (`2026-12-01T10:00:00Z`), as documented.
    assert!(
        s["loaded_at"]
            .as_str()
            .is_some_and(|at| at.len() == 20 && at.ends_with('Z')),
        "loaded_at: {s}"
    );
    assert!(
        s["source"]
            .as_str()
            .is_some_and(|p| p.contains("kiln.toml")),
        "source: {s}"
    );
    assert!(s["uptime_s"].is_u64(), "uptime_s: {s}");
    assert_eq!(s["draining"], json!(false), "{s}");
    assert_eq!(s["pid"], json!(server.pid()), "{s}");
    let workers = s["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("workers: {s}"));
    assert_eq!(workers.len(), 2, "one entry per worker: {s}");
    for worker in workers {
        assert!(!worker["id"].is_null(), "worker id: {s}");
        assert_eq!(worker["generation"], json!(1), "{s}");
    }
    let main = &s["pools"]["main"];
    assert_eq!(main["kind"], json!("sqlite"), "{s}");
    assert_eq!(main["max_size"], json!(4), "{s}");
    assert_eq!(main["size"], json!(4), "warm = 4 connections open: {s}");
    for figure in ["available", "waiting"] {
        assert!(main[figure].is_u64(), "pools.main.{figure}: {s}");
    }

    let config = server.admin_get("/admin/config");
    assert_eq!(config.status, 200, "{config:?}");
    assert_eq!(config.header("etag"), Some("\"1\""), "{config:?}");
    let c = config.json();
    assert_eq!(c["app"]["greeting"], json!("shapes"), "{c}");
    assert_eq!(c["server"]["workers"], json!(2), "{c}");
    assert_eq!(c["pools"]["main"]["max_size"], json!(4), "{c}");
    assert_eq!(c["pools"]["main"]["kind"], json!("sqlite"), "{c}");

    // After a reload answers, every worker already runs the new generation.
    server
        .site
        .write_config(&Config::sqlite().greeting("shapes 2").render());
    assert_eq!(server.reload().status, 200);
    let s = server.admin_get("/admin/status").json();
    assert_eq!(s["generation"], json!(2), "{s}");
    for worker in s["workers"].as_array().unwrap() {
        assert_eq!(worker["generation"], json!(2), "{s}");
    }
    let config = server.admin_get("/admin/config");
    assert_eq!(config.header("etag"), Some("\"2\""), "{config:?}");
    assert_eq!(config.json()["app"]["greeting"], json!("shapes 2"));
}
