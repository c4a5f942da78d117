//! `POST /admin/rollback` returns to the configuration the current generation
//! replaced, served and written back to the file; `GET /admin/history`
//! remembers every attempt, successful or not, with what triggered it.

use serde_json::{Value, json};

use crate::util::{self, Config, Server, json_strings};

fn config(greeting: &str) -> Config {
    Config::sqlite().greeting(greeting)
}

#[test]
fn rollback_undoes_an_unwanted_change_and_a_second_one_redoes_it() {
    let server = Server::start(&config("wanted").render());
    let original = server.site.read_config();

    let unwanted = json!({"app": {"greeting": "unwanted"}, "pools": {"main": {"max_size": 6}}});
    let reply = server.patch_config(&unwanted);
    assert_eq!(reply.status, 200, "{reply:?}");
    server.assert_serving("unwanted", 2);
    let patched = server.site.read_config();

    // Each rollback reverses both keys and rebuilds the pool.
    let rollback = |generation| {
        let changed = ["app.greeting", "pools.main.max_size"];
        util::assert_reloaded(&server.rollback(), generation, &changed, &["main"]);
    };
    rollback(3);
    server.assert_serving("wanted", 3);
    let status = server.admin_get("/admin/status").json();
    assert_eq!(status["pools"]["main"]["max_size"], json!(4), "{status}");
    assert_eq!(
        server.site.read_config(),
        original,
        "the file is back to its original text, byte for byte"
    );

    // Rolling back a rollback returns to the unwanted change.
    rollback(4);
    server.assert_serving("unwanted", 4);
    assert_eq!(server.site.read_config(), patched);
}

#[test]
fn rollback_before_any_reload_gets_409() {
    let server = Server::start(&config("only").render());
    let file = server.site.read_config();
    util::assert_refused(&server.rollback(), 409, 1);
    server.assert_serving("only", 1);
    assert_eq!(server.site.read_config(), file, "the file is untouched");
}

/// Checks one history entry: a success names its generation and changes, a
/// failure has a null generation, no changes and an error containing
/// `error`.
fn assert_entry(entry: &Value, trigger: &str, outcome: Result<u64, &str>) {
    assert_eq!(entry["trigger"], json!(trigger), "{entry}");
    assert!(
        entry["at"].as_str().is_some_and(|at| at.ends_with('Z')),
        "`at` is an RFC 3339 UTC time: {entry}"
    );
    assert!(json_strings(&entry["rebuilt"]).is_empty(), "{entry}");
    match outcome {
        Ok(generation) => {
            assert_eq!(entry["generation"], json!(generation), "{entry}");
            assert_eq!(json_strings(&entry["changed"]), ["app.greeting"], "{entry}");
            assert_eq!(entry["error"], Value::Null, "{entry}");
        }
        Err(error) => {
            assert_eq!(
                entry["generation"],
                Value::Null,
                "a failure has no id: {entry}"
            );
            assert!(json_strings(&entry["changed"]).is_empty(), "{entry}");
            assert!(
                entry["error"].as_str().is_some_and(|e| e.contains(error)),
                "the error mentions {error:?}: {entry}"
            );
        }
    }
}

#[test]
fn history_lists_successes_and_failures_with_their_triggers() {
    let server = Server::start(&config("g1").render());
    assert!(server.history().is_empty(), "no attempt yet");

    server.site.write_config(&config("g2").render());
    assert_eq!(server.reload().status, 200);
    server
        .site
        .write_config(&config("bad").set("pools.main.max_size", "0").render());
    assert_eq!(server.reload().status, 422);
    server.site.write_config(&config("g2").render());

    let g3 = json!({"app": {"greeting": "g3"}});
    assert_eq!(server.patch_config_if_match(&g3, "\"1\"").status, 412);
    assert_eq!(server.patch_config(&g3).status, 200);
    assert_eq!(server.rollback().status, 200);

    server.site.write_config(&config("g5").render());
    server.signal("HUP");
    assert_eq!(server.wait_for_greeting("g5"), 5);
    server.wait_for_history_entry(5);

    let history = server.history();
    assert_eq!(history.len(), 6, "{history:#?}");
    assert_entry(&history[0], "signal", Ok(5));
    assert_entry(&history[1], "rollback", Ok(4));
    assert_entry(&history[2], "patch", Ok(3));
    assert_entry(&history[3], "patch", Err("ETag"));
    assert_entry(&history[4], "http-reload", Err("pools.main.max_size"));
    assert_entry(&history[5], "http-reload", Ok(2));
}

#[test]
fn history_keeps_the_last_attempts_default_20_or_as_configured() {
    let server = Server::start(&config("start").render());
    let invalid = json!({"pools": {"main": {"max_size": 0}}});
    for _ in 0..22 {
        assert_eq!(server.patch_config(&invalid).status, 422);
    }
    assert_eq!(
        server
            .patch_config(&json!({"app": {"greeting": "ok"}}))
            .status,
        200
    );
    let history = server.history();
    assert_eq!(history.len(), 20, "default capacity: {history:#?}");
    assert_entry(&history[0], "patch", Ok(2));
    for entry in &history[1..] {
        assert_entry(entry, "patch", Err("pools.main.max_size"));
    }

    let reply = server.patch_config(&json!({"reload": {"history": 3}}));
    assert_eq!(reply.status, 200, "{reply:?}");
    let history = server.history();
    let generations: Vec<&Value> = history.iter().map(|e| &e["generation"]).collect();
    assert_eq!(
        generations,
        [&json!(3), &json!(2), &Value::Null],
        "reload.history = 3 keeps the newest three: {history:#?}"
    );
}
