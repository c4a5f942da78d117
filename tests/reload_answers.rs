//! Answers that never lie: a `200` lists only what was applied, and what
//! cannot be applied (a restart-only key, a key the environment overrides,
//! a file that drifted from the generation being patched) is refused with a
//! `409` naming why, changing nothing.

use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::util::{self, APPLY_TIMEOUT, Config, PgProxy, Server, Site, json_strings};

/// The line kiln logs at debug level when a reload begins.
const DEBUG_NEEDLE: &str = "Reload requested";

#[test]
fn log_level_applies_live_and_log_format_needs_a_restart() {
    let base = Config::sqlite().greeting("one");
    let server = Server::start(&base.render());

    // At info, the reload's debug line is not logged.
    let reply = server.reload();
    util::assert_reloaded(&reply, 2, &[], &[]);
    assert!(
        !server.stderr.text().contains(DEBUG_NEEDLE),
        "a debug line at level info:\n{}",
        server.stderr.text()
    );

    let debug = base.clone().set_str("log.level", "debug");
    server.site.write_config(&debug.render());
    util::assert_reloaded(&server.reload(), 3, &["log.level"], &[]);
    let from = server.stderr.len();
    util::assert_reloaded(&server.reload(), 4, &[], &[]);
    let line = server
        .stderr
        .wait_for(from, DEBUG_NEEDLE, APPLY_TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "no debug line after log.level = debug:\n{}",
                server.stderr.text()
            )
        });
    assert!(line.contains("DEBUG"), "{line}");

    // The grace period is read at drain time: a live key.
    let grace = debug.clone().set_str("server.shutdown_grace", "3s");
    server.site.write_config(&grace.render());
    util::assert_reloaded(&server.reload(), 5, &["server.shutdown_grace"], &[]);

    // The format is fixed when the subscriber is installed: restart-only.
    server
        .site
        .write_config(&grace.clone().set_str("log.format", "json").render());
    let body = util::assert_refused(&server.reload(), 409, 5);
    assert_eq!(json_strings(&body["keys"]), ["log.format"], "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("log.format"),
        "{body}"
    );
    server.assert_serving("one", 5);
}

#[test]
fn a_level_change_is_refused_while_rust_log_decides_the_filter() {
    let base = Config::sqlite().greeting("one");
    let server = Server::start_with(&base.render(), &[("RUST_LOG", "info")]);
    server
        .site
        .write_config(&base.set_str("log.level", "debug").render());
    let body = util::assert_refused(&server.reload(), 409, 1);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("log.level") && error.contains("RUST_LOG"),
        "{body}"
    );
}

/// A hand edit of the file that was never reloaded, then a PATCH: the patch
/// would have applied and persisted the edit along with itself.
#[test]
fn patch_is_refused_when_the_file_drifted_from_its_generation() {
    let base = Config::sqlite().greeting("served");
    let server = Server::start(&base.render());
    let hand_edit = base.clone().greeting("unapplied hand edit").render();
    server.site.write_config(&hand_edit);

    let patch = json!({"pools": {"main": {"max_size": 6}}});
    let reply = server.patch_config(&patch);
    let body = util::assert_refused(&reply, 409, 1);
    let error = body["error"].as_str().unwrap();
    for needle in ["kiln.toml changed since generation 1", "POST /admin/reload"] {
        assert!(error.contains(needle), "the error names {needle:?}: {body}");
    }
    assert_eq!(
        server.site.read_config(),
        hand_edit,
        "the file is untouched"
    );
    server.assert_serving("served", 1);

    // Reloading takes the edit in; then the patch applies on top of it.
    util::assert_reloaded(&server.reload(), 2, &["app.greeting"], &[]);
    let reply = server.patch_config(&patch);
    util::assert_reloaded(&reply, 3, &["pools.main.max_size"], &["main"]);
    server.assert_serving("unapplied hand edit", 3);
}

/// A hand edit saved while a PATCH warms its pool (the database answers
/// after 3 s): writing the patched text would discard it unseen, so the
/// write is refused, as the check before the warm-up refuses an older edit.
#[test]
fn patch_is_refused_when_the_file_drifts_while_it_warms() {
    let pg = util::postgres();
    let proxy = PgProxy::start(Duration::from_secs(3));
    let base = Config::postgres(&pg.url()).greeting("served");
    let server = Server::start(&base.render());
    let hand_edit = base.clone().greeting("saved during the warm-up").render();

    let patch = json!({"pools": {"main": {"url": pg.url_at(&proxy.addr().to_string())}}});
    let reply = thread::scope(|scope| {
        let patching = scope.spawn(|| server.patch_config(&patch));
        util::wait_until(
            APPLY_TIMEOUT,
            "the patch's warm-up to reach the database",
            || proxy.accepted() > 0,
        );
        server.site.write_config(&hand_edit);
        patching.join().expect("the patch thread")
    });
    let body = util::assert_refused(&reply, 409, 1);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("kiln.toml changed since generation"),
        "{body}"
    );
    assert_eq!(server.site.read_config(), hand_edit, "the edit is kept");
    server.assert_serving("served", 1);
}

#[test]
fn rollback_is_refused_when_the_file_drifted_from_its_generation() {
    let base = Config::sqlite().greeting("first");
    let server = Server::start(&base.render());
    let reply = server.patch_config(&json!({"app": {"greeting": "second"}}));
    util::assert_reloaded(&reply, 2, &["app.greeting"], &[]);
    let hand_edit = base.clone().greeting("unapplied hand edit").render();
    server.site.write_config(&hand_edit);

    let body = util::assert_refused(&server.rollback(), 409, 2);
    let error = body["error"].as_str().unwrap();
    for needle in ["kiln.toml changed since generation 2", "POST /admin/reload"] {
        assert!(error.contains(needle), "the error names {needle:?}: {body}");
    }
    assert_eq!(server.site.read_config(), hand_edit);
    server.assert_serving("second", 2);
}

#[test]
fn patch_of_a_key_the_environment_overrides_is_refused_naming_the_variable() {
    let base = Config::sqlite().greeting("from the file");
    let server = Server::start_with(
        &base.render(),
        &[("KILN__APP__GREETING", "from the environment")],
    );
    server.assert_serving("from the environment", 1);
    let file = server.site.read_config();

    for patch in [
        json!({"app": {"greeting": "patched"}}),
        json!({"app": null}),
        json!({"pools": {"main": {"max_size": 6}}, "app": {"greeting": "patched"}}),
    ] {
        let body = util::assert_refused(&server.patch_config(&patch), 409, 1);
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("KILN__APP__GREETING") && error.contains("app.greeting"),
            "{patch}: {body}"
        );
        assert_eq!(body["variable"], "KILN__APP__GREETING", "{body}");
        assert_eq!(
            server.site.read_config(),
            file,
            "{patch}: the file is untouched"
        );
    }
    server.assert_serving("from the environment", 1);

    // A key the environment leaves alone still patches.
    let reply = server.patch_config(&json!({"pools": {"main": {"max_size": 6}}}));
    util::assert_reloaded(&reply, 2, &["pools.main.max_size"], &["main"]);
}

#[test]
fn validate_builds_a_worker_and_serves_its_warm_requests() {
    let config = Config::sqlite().set("server.warm_requests", r#"["/", "/missing"]"#);
    let site = Site::new(&config.render());
    let out = util::run(site.command().arg("validate").arg(site.config_path()));
    assert!(!out.status.success(), "{out:?}");
    util::assert_error_line(&out.stderr, &["/missing", "404"]);

    let help = util::run(util::kiln_command().args(["validate", "--help"]));
    assert!(help.status.success(), "{help:?}");
    for needle in ["prepare", "worker", "warm_requests"] {
        assert!(
            help.stdout.contains(needle),
            "validate --help says it runs {needle}: {help:?}"
        );
    }
}
