//! `PATCH /admin/config`: a JSON merge patch is validated and warmed like a
//! reload, written to the source file (comments, key order and formatting
//! kept), then served; every refusal answers its code and leaves the file
//! byte for byte and the generation as they were.

use std::collections::BTreeSet;
use std::sync::Barrier;
use std::thread;

use serde_json::{Value, json};

use crate::util::{self, Config, Server, json_strings};

/// Short warm timeout so the unreachable-database case fails fast.
fn base(greeting: &str) -> Config {
    Config::sqlite()
        .greeting(greeting)
        .set_str("server.warm_timeout", "5s")
}

/// Sends `patch` (a JSON text, sent as-is) with `headers` and checks that it
/// is refused with `status`, an error message and the current generation;
/// that the file is byte for byte what it was; and that the same generation
/// keeps serving the same greeting. Returns the answer's JSON.
fn assert_patch_refused(
    server: &Server,
    patch: &str,
    headers: &[(&str, &str)],
    status: u16,
) -> Value {
    let generation = server.status_generation();
    let greeting = server.get("/").body;
    let file = server.site.read_config();

    let body = util::assert_refused(&server.patch_config_raw(patch, headers), status, generation);
    assert_eq!(
        server.site.read_config(),
        file,
        "PATCH {patch}: a refused patch changed the file"
    );
    server.assert_serving(&greeting, generation);
    assert_eq!(server.config_etag(), format!("\"{generation}\""));
    body
}

#[test]
fn patch_is_applied_persisted_and_served_after_a_restart() {
    let server = Server::start(&base("before").render());
    let note = server.post_json("/notes", &json!({"text": "kept across the rebuild"}));
    assert_eq!(note.status, 201, "{note:?}");
    let note = format!("/notes/{}", note.json()["id"]);

    let etag = server.config_etag();
    assert_eq!(etag, "\"1\"");
    let patch = json!({"app": {"greeting": "after"}, "pools": {"main": {"max_size": 6}}});
    let reply = server.patch_config_if_match(&patch, &etag);
    util::assert_reloaded(
        &reply,
        2,
        &["app.greeting", "pools.main.max_size"],
        &["main"],
    );

    server.assert_serving("after", 2);
    let config = server.admin_get("/admin/config");
    assert_eq!(config.header("etag"), Some("\"2\""), "{config:?}");
    assert_eq!(config.json()["pools"]["main"]["max_size"], json!(6));
    assert_eq!(
        server.site.read_config(),
        base("after").set("pools.main.max_size", "6").render(),
        "the file holds the patched values, written like the original"
    );
    // The rebuilt pool opened the same database file, relative to the
    // config file's folder.
    assert!(server.site.path("data/kiln.sqlite3").is_file());
    assert_eq!(server.get(&note).status, 200, "a stored note survives");

    let site = server.site.clone();
    drop(server);
    let mut restarted = Server::spawn(site, &[]);
    restarted.wait_ready();
    restarted.assert_serving("after", 1);
    let config = restarted.admin_get("/admin/config").json();
    assert_eq!(config["pools"]["main"]["max_size"], json!(6), "{config}");
    assert_eq!(
        restarted.get(&note).status,
        200,
        "the note outlives a restart"
    );
}

#[test]
fn invalid_or_unwarmable_patch_leaves_the_file_byte_for_byte() {
    let server = Server::start(&base("stable").render());
    let refusing = util::ClosedPort::new();
    let closed = refusing.addr();
    let cases = [
        (
            json!({"pools": {"main": {"max_size": 0}}}),
            "pools.main.max_size",
        ),
        (
            json!({"pools": {"main": {"max_size": "eight"}}, "app": {"greeting": "no"}}),
            "pools.main.max_size",
        ),
        (json!({"pools": {"main": {"warm": 9}}}), "pools.main.warm"),
        (json!({"pools": {"main": {"colour": "red"}}}), "pools.main"),
    ];
    for (patch, key) in cases {
        let body = assert_patch_refused(&server, &patch.to_string(), &[], 422);
        assert!(
            body["key"].as_str().is_some_and(|k| k.starts_with(key)),
            "the answer names {key}: {body}"
        );
    }

    // Valid, but the database cannot be reached: warm-up fails.
    let unreachable = json!({"app": {"greeting": "no"}, "pools": {"main": {
        "kind": "postgres",
        "url": format!("postgres://postgres@{closed}/test"),
    }}});
    let body = assert_patch_refused(&server, &unreachable.to_string(), &[], 503);
    assert_eq!(body["resource"], json!("main"), "{body}");

    let reply = server.patch_config(&json!({"app": {"greeting": "fine"}}));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["generation"],
        json!(2),
        "refused patches consume no generation id: {reply:?}"
    );
}

#[test]
fn stale_if_match_gets_412_and_changes_nothing() {
    let server = Server::start(&base("one").render());
    let first = server.config_etag();
    let reply = server.patch_config_if_match(&json!({"app": {"greeting": "two"}}), &first);
    assert_eq!(reply.status, 200, "{reply:?}");

    let stale = json!({"app": {"greeting": "from a stale view"}}).to_string();
    let body = assert_patch_refused(&server, &stale, &[("if-match", &first)], 412);
    assert_eq!(body["generation"], json!(2), "{body}");

    let fresh = server.config_etag();
    assert_eq!(fresh, "\"2\"");
    let reply = server.patch_config_if_match(&json!({"app": {"greeting": "three"}}), &fresh);
    assert_eq!(reply.status, 200, "the current ETag matches: {reply:?}");
    server.assert_serving("three", 3);
}

#[test]
fn concurrent_patches_with_one_etag_exactly_one_wins() {
    let server = Server::start(&base("start").render());
    let etag = server.config_etag();
    let barrier = Barrier::new(2);
    let replies: Vec<(&str, util::Reply)> = thread::scope(|scope| {
        let handles = ["left", "right"].map(|greeting| {
            let (server, etag, barrier) = (&server, &etag, &barrier);
            scope.spawn(move || {
                barrier.wait();
                let patch = json!({"app": {"greeting": greeting}});
                (greeting, server.patch_config_if_match(&patch, etag))
            })
        });
        handles.map(|h| h.join().expect("a PATCH thread")).into()
    });

    let mut statuses: Vec<u16> = replies.iter().map(|(_, r)| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412], "{replies:?}");
    let (winner, loser) = if replies[0].1.status == 200 {
        (replies[0].0, replies[1].0)
    } else {
        (replies[1].0, replies[0].0)
    };
    server.assert_serving(winner, 2);
    let file = server.site.read_config();
    assert!(
        file.contains(&format!("greeting = \"{winner}\"")),
        "the winner's value is in the file:\n{file}"
    );
    assert!(
        !file.contains(loser),
        "the loser's value reached the file:\n{file}"
    );
}

/// A hand-written file: comments everywhere, sections and keys in no
/// canonical order, uneven spacing.
const COMMENTED: &str = r#"# kiln under test: every comment, blank line and odd spacing
# below must survive a PATCH untouched.

[app]                         # the app first, on purpose
greeting   =   "before"       # shown at /

[pools.main]
url = "data/kiln.sqlite3"     # relative to this file's folder
kind = "sqlite"
warm = 2
max_size    = 4               # raised by the test
wait_timeout = "10s"

[server]
workers = 2                   # restart-only
listen = "127.0.0.1:0"
warm_timeout = "30s"
warm_requests = [ "/" ]

[admin]
listen = "127.0.0.1:0"
# token = "never set here"

[log]
format = "pretty"
level = "info"
"#;

#[test]
fn patch_keeps_comments_key_order_and_formatting() {
    let server = Server::start(COMMENTED);
    let patch = json!({"pools": {"main": {"max_size": 6}}, "app": {"greeting": "after"}});
    let reply = server.patch_config(&patch);
    assert_eq!(reply.status, 200, "{reply:?}");
    server.assert_serving("after", 2);

    let expected = COMMENTED
        .replace(r#"=   "before"  "#, r#"=   "after"  "#)
        .replace("max_size    = 4 ", "max_size    = 6 ");
    assert_ne!(expected, COMMENTED, "the test's replacements must apply");
    assert_eq!(
        server.site.read_config(),
        expected,
        "only the patched values' text changed"
    );
}

#[test]
fn restart_only_keys_get_409() {
    let server = Server::start(&base("stable").render());
    let workers = json!({"server": {"workers": 3}, "app": {"greeting": "no"}});
    let body = assert_patch_refused(&server, &workers.to_string(), &[], 409);
    assert_eq!(json_strings(&body["keys"]), ["server.workers"], "{body}");

    let (main, admin) = util::free_addr_pair();
    let all = json!({
        "server": {"workers": 3, "listen": main.to_string(), "reuse_port": true,
                   "header_read_timeout": "5s"},
        "admin": {"listen": admin.to_string()},
    });
    let body = assert_patch_refused(&server, &all.to_string(), &[], 409);
    let keys: BTreeSet<&str> = json_strings(&body["keys"]).into_iter().collect();
    let expected = BTreeSet::from([
        "admin.listen",
        "server.header_read_timeout",
        "server.listen",
        "server.reuse_port",
        "server.workers",
    ]);
    assert_eq!(keys, expected, "every restart-only key is named: {body}");
}

#[test]
fn malformed_json_gets_400() {
    let server = Server::start(&base("stable").render());
    for body in [
        r#"{"app": {"greeting": "no"}"#,
        r#"{"app": {"greeting": "no"}} trailing"#,
        "greeting = \"no\"",
        "",
    ] {
        assert_patch_refused(&server, body, &[], 400);
    }
}

#[test]
fn secret_set_through_patch_is_never_echoed() {
    let token = "tok-61f0-patched-secret";
    let server = Server::start(&base("stable").render());
    let reply = server.patch_config(&json!({"admin": {"token": token}}));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        !reply.body.contains(token),
        "token in the answer: {reply:?}"
    );
    assert!(
        server.site.read_config().contains(token),
        "the token is persisted to the file"
    );

    // From now on the admin API wants the new token.
    let denied = server.admin_call("GET", "/admin/config", None);
    assert_eq!(denied.status, 401, "{denied:?}");
    let bearer = format!("Bearer {token}");
    for path in ["/admin/config", "/admin/history", "/admin/status"] {
        let reply = server.admin_call("GET", path, Some(&bearer));
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert!(!reply.body.contains(token), "token in {path}: {reply:?}");
    }
    let config = server.admin_call("GET", "/admin/config", Some(&bearer));
    assert_eq!(config.json()["admin"]["token"], json!("***"), "{config:?}");
    server.assert_not_printed(token);
}
