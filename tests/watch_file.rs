//! `[reload] watch = true`: a change to the file's text is applied after a
//! quiet period, however it is saved (in place, write-and-rename, a
//! Kubernetes ConfigMap's symlink swap, at the target of a link into another
//! folder); the same bytes do not reload, a bad save is logged once and left,
//! a save that failed for a reason that passes is retried until it applies,
//! writes to other files beside it neither
//! wake the watch nor hold back a save, and a burst of saves is coalesced.
//!
//! These tests run kiln with `kiln::watch=debug` and `kiln::source=debug`,
//! so that each look the watcher takes at the file is logged; a "did not
//! reload" assertion waits for the look that decided it, never for time to
//! pass.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;

use serde_json::{Value, json};

use crate::util::{self, Config, Server, Site, json_strings};

/// Logs every look the watcher takes (see the module docs).
const WATCH_LOG: (&str, &str) = (
    "RUST_LOG",
    "info,kiln::watch=debug,kiln::source=debug,tokio_postgres=warn",
);
/// Logged once the watch is armed.
const WATCHING: &str = "Watching ";
/// Logged by a look that found the current generation's text.
const SAME_AS_CURRENT: &str = "text is the current generation's; nothing to reload";
/// Logged by a look that found the text tried last (and refused).
const SAME_AS_TRIED: &str = "text is the one tried last";
/// Logged by a look while `reload.watch` is false.
const WATCH_OFF: &str = "reload.watch is false; not reloading";
/// Logged when a reload that failed for a reason that may pass is scheduled
/// to be tried again.
const RETRYING: &str = "trying the same text again";

fn watched(greeting: &str) -> Config {
    Config::sqlite()
        .set("reload.watch", "true")
        .greeting(greeting)
}

/// Serves `site` with the watch's looks logged, and waits for `ready:`.
fn spawn_watched(site: Site) -> Server {
    let mut server = Server::spawn(site, &[WATCH_LOG]);
    server.wait_ready();
    server
}

/// Serves `config` and waits for the watch to be armed and to have taken
/// its first look (which finds the text it started with).
fn start_watched(config: &Config) -> Server {
    let server = spawn_watched(Site::new(&config.render()));
    wait_for_log(&server, 0, WATCHING);
    wait_for_log(&server, 0, SAME_AS_CURRENT);
    server
}

/// Waits for a stderr line containing `needle` at index `from` or later.
fn wait_for_log(server: &Server, from: usize, needle: &str) -> String {
    server
        .stderr
        .wait_for(from, needle, util::APPLY_TIMEOUT)
        .unwrap_or_else(|| panic!("kiln did not log {needle:?}"))
}

/// Runs `change`, then waits for the watcher to log `needle` about it.
fn after_look(server: &Server, needle: &str, change: impl FnOnce()) {
    let from = server.stderr.len();
    change();
    wait_for_log(server, from, needle);
}

/// Waits for `greeting` to be served by generation `generation` and checks
/// that a successful `watch` entry recorded it.
fn assert_watch_applied(server: &Server, greeting: &str, generation: u64) {
    assert_eq!(server.wait_for_greeting(greeting), generation);
    let entry = server.wait_for_history_entry(generation);
    assert_eq!(entry["trigger"], json!("watch"), "{entry}");
    assert_eq!(entry["error"], Value::Null, "{entry}");
    assert!(
        json_strings(&entry["changed"]).contains(&"app.greeting"),
        "{entry}"
    );
}

#[test]
fn in_place_write_is_applied_and_the_same_bytes_are_not() {
    let server = start_watched(&watched("one"));
    let two = watched("two").render();
    server.site.write_config_in_place(&two);
    assert_watch_applied(&server, "two", 2);

    // Saved again without a change: nothing to reload.
    after_look(&server, SAME_AS_CURRENT, || {
        server.site.write_config_in_place(&two)
    });
    server
        .site
        .write_config_in_place(&watched("three").render());
    assert_watch_applied(&server, "three", 3);
    assert_eq!(
        server.history_of("watch").len(),
        2,
        "saving the same bytes reloaded: {:#?}",
        server.history()
    );
}

/// `ready:` promises a working server, watch included: a save made the
/// moment it is logged must not be lost (until some later save).
#[test]
fn save_right_after_ready_is_applied() {
    let server = spawn_watched(Site::new(&watched("one").render()));
    server.site.write_config(&watched("two").render());
    assert_watch_applied(&server, "two", 2);
}

/// A save that lands while the server warms up (after it read the file,
/// before it watches it) is applied once the watch is armed: the served text
/// must catch up with the file's.
#[test]
fn save_during_start_up_is_applied_once_watching() {
    let mut server = Server::spawn(Site::new(&watched("one").render()), &[WATCH_LOG]);
    let started = server
        .stderr
        .wait_for(0, "Starting kiln", util::READY_TIMEOUT);
    assert!(started.is_some(), "kiln did not log `Starting kiln`");
    server.site.write_config(&watched("two").render());
    server.wait_ready();
    assert_watch_applied(&server, "two", 2);
}

#[test]
fn write_and_rename_is_applied_every_time() {
    let server = start_watched(&watched("one"));
    server.site.write_config(&watched("two").render());
    assert_watch_applied(&server, "two", 2);
    // The file is a new inode now; the watch must still see the next save.
    server.site.write_config(&watched("three").render());
    assert_watch_applied(&server, "three", 3);
}

/// A ConfigMap volume laid out in the site's config folder as the kubelet
/// does: `kiln.toml` → `..data/kiln.toml`, `..data` → `..<timestamp>/`. An
/// update writes a new timestamped folder, points a new `..data_tmp` link at
/// it, renames that over `..data`, then removes the old folder.
struct ConfigMap {
    site: Site,
    folder: String,
    serial: u32,
}

impl ConfigMap {
    /// Replaces the site's plain config file with the ConfigMap layout.
    fn new(site: &Site, text: &str) -> ConfigMap {
        std::fs::remove_file(site.config_path()).expect("remove the plain config file");
        let mut map = ConfigMap {
            site: site.clone(),
            folder: String::new(),
            serial: 0,
        };
        map.folder = map.write_folder(text);
        symlink(&map.folder, site.path("..data")).expect("link ..data");
        symlink("..data/kiln.toml", site.config_path()).expect("link kiln.toml");
        map
    }

    fn write_folder(&mut self, text: &str) -> String {
        self.serial += 1;
        let folder = format!("..2026_01_01_00_00_00.{:09}", self.serial);
        std::fs::create_dir(self.site.path(&folder)).expect("create the data folder");
        std::fs::write(self.site.path(&format!("{folder}/kiln.toml")), text)
            .expect("write the data file");
        folder
    }

    fn update(&mut self, text: &str) {
        let folder = self.write_folder(text);
        let tmp = self.site.path("..data_tmp");
        symlink(&folder, &tmp).expect("link ..data_tmp");
        std::fs::rename(&tmp, self.site.path("..data")).expect("swap ..data");
        let old = std::mem::replace(&mut self.folder, folder);
        std::fs::remove_dir_all(self.site.path(&old)).expect("remove the old data folder");
    }
}

#[test]
fn configmap_symlink_swap_is_applied() {
    let site = Site::new("");
    let mut map = ConfigMap::new(&site, &watched("one").render());
    let server = spawn_watched(site);
    wait_for_log(&server, 0, SAME_AS_CURRENT);
    server.assert_serving("one", 1);
    // Relative paths resolve against the link's folder, not the timestamped
    // one the kubelet will delete.
    assert!(server.site.path("data/kiln.sqlite3").is_file());
    let note = server.post_json("/notes", &json!({"text": "kept"}));
    assert_eq!(note.status, 201, "{note:?}");
    let note = format!("/notes/{}", note.json()["id"]);

    map.update(&watched("two").render());
    assert_watch_applied(&server, "two", 2);

    // Again, this time rebuilding the pool: same database file.
    map.update(&watched("three").set("pools.main.max_size", "6").render());
    assert_watch_applied(&server, "three", 3);
    let entry = server.wait_for_history_entry(3);
    assert_eq!(json_strings(&entry["rebuilt"]), ["main"], "{entry}");
    assert_eq!(server.get(&note).status, 200, "the note survives");
}

#[test]
fn invalid_save_is_logged_once_and_a_later_good_save_applies() {
    let server = start_watched(&watched("good"));
    let bad = watched("must not apply")
        .set("pools.main.max_size", "0")
        .render();
    server.site.write_config_in_place(&bad);
    util::wait_until(
        util::APPLY_TIMEOUT,
        "a failed watch entry in /admin/history",
        || {
            server
                .history_of("watch")
                .iter()
                .any(|e| e["error"].is_string())
        },
    );
    server.assert_serving("good", 1);
    let failures = server.history_of("watch");
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert_eq!(failures[0]["generation"], Value::Null, "{failures:#?}");
    assert!(
        failures[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("pools.main.max_size")),
        "the cause is named: {failures:#?}"
    );

    // The same bad bytes saved again are not tried again; nor is an invalid
    // text retried on its own (a retry is logged when the failure is, before
    // the watcher's next look).
    after_look(&server, SAME_AS_TRIED, || server.site.write_config(&bad));
    let log = server.stderr.text();
    assert!(
        !log.contains(RETRYING),
        "an invalid save is retried:\n{log}"
    );
    server.site.write_config(&watched("better").render());
    assert_watch_applied(&server, "better", 2);

    let logged: Vec<String> = server
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("trigger=watch"))
        .collect();
    assert_eq!(logged.len(), 1, "the bad save is logged once: {logged:#?}");
    assert!(logged[0].contains("pools.main.max_size"), "{logged:#?}");
    assert_eq!(
        server.history_of("watch").len(),
        2,
        "{:#?}",
        server.history()
    );
}

/// A burst of saves closer together than `reload.debounce` is coalesced.
/// Timing is not guaranteed on a busy machine (a stall longer than the
/// debounce mid-burst splits it), so what is asserted is what always holds:
/// the last save is served, every reload in between applied cleanly, and
/// fewer reloads happened than saves (49 stalls of a second each would be
/// needed to break it).
#[test]
fn burst_of_50_saves_is_coalesced() {
    let server = start_watched(&watched("start").set_str("reload.debounce", "1s"));
    for i in 0..50 {
        server.site.write_config(
            &watched(&format!("burst {i}"))
                .set_str("reload.debounce", "1s")
                .render(),
        );
    }
    let generation = server.wait_for_greeting("burst 49");
    server.wait_for_history_entry(generation);
    let reloads = server.history_of("watch");
    assert!(
        (1..50).contains(&reloads.len()),
        "50 saves in a burst made {} watch reloads: {reloads:#?}",
        reloads.len()
    );
    assert!(reloads.iter().all(|e| e["error"].is_null()), "{reloads:#?}");
    assert_eq!(generation, 1 + reloads.len() as u64, "{reloads:#?}");
}

#[test]
fn watch_is_off_by_default_and_a_reload_can_turn_it_on() {
    let plain = |greeting: &str| Config::sqlite().greeting(greeting).render();
    let server = spawn_watched(Site::new(&plain("one")));
    wait_for_log(&server, 0, WATCHING);
    wait_for_log(&server, 0, WATCH_OFF);
    after_look(&server, WATCH_OFF, || {
        server.site.write_config(&plain("two"))
    });
    server.assert_serving("one", 1);
    assert!(server.history().is_empty(), "{:#?}", server.history());

    server.site.write_config(&watched("three").render());
    assert_eq!(server.reload().status, 200);
    server.assert_serving("three", 2);
    server.site.write_config(&watched("four").render());
    assert_watch_applied(&server, "four", 3);
}

#[test]
fn own_writes_by_patch_and_rollback_do_not_reload_again() {
    let server = start_watched(&watched("one").set_str("reload.debounce", "100ms"));
    after_look(&server, SAME_AS_CURRENT, || {
        let reply = server.patch_config(&json!({"app": {"greeting": "two"}}));
        assert_eq!(reply.status, 200, "{reply:?}");
    });
    after_look(&server, SAME_AS_CURRENT, || {
        assert_eq!(server.rollback().status, 200)
    });
    server.site.write_config(&watched("four").render());
    assert_watch_applied(&server, "four", 4);
    let triggers: Vec<Value> = server
        .history()
        .iter()
        .map(|e| e["trigger"].clone())
        .collect();
    assert_eq!(
        triggers,
        [json!("watch"), json!("rollback"), json!("patch")],
        "{:#?}",
        server.history()
    );
}

/// A log written beside the configuration (`kiln /etc/kiln/kiln.toml
/// 2>>/etc/kiln/kiln.log`, a sidecar's file) neither wakes the watcher nor
/// holds back a save: only events on the configuration start or restart the
/// quiet period. A line is written between each look at what is served, far
/// more often than `reload.debounce` (2 s), until the save is applied; a
/// watcher that counted those writes would never see a quiet period.
#[test]
fn a_log_written_beside_the_config_neither_wakes_the_watcher_nor_holds_back_a_save() {
    let config = |greeting: &str| watched(greeting).set_str("reload.debounce", "2s");
    let server = start_watched(&config("one"));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(server.site.path("kiln.log"))
        .expect("open a log beside the config");
    let from = server.stderr.len();
    server.site.write_config(&config("two").render());
    let mut lines = 0;
    util::wait_until(
        util::APPLY_TIMEOUT,
        "the save to be applied while a log beside it is written",
        || {
            writeln!(log, "log line {lines}").expect("write the log");
            lines += 1;
            server.get("/").body == "two"
        },
    );
    assert_watch_applied(&server, "two", 2);
    // The save's look was the only one: it reloaded, so it logged none of
    // the lines of a look that found nothing new.
    let looks: Vec<String> = server.stderr.snapshot()[from..]
        .iter()
        .filter(|line| {
            [SAME_AS_CURRENT, SAME_AS_TRIED]
                .iter()
                .any(|n| line.contains(n))
        })
        .cloned()
        .collect();
    assert_eq!(
        looks,
        Vec::<String>::new(),
        "{lines} log lines woke the watcher"
    );
    assert_eq!(
        server.history_of("watch").len(),
        1,
        "{:#?}",
        server.history()
    );
}

/// `/etc/kiln/deploy.toml -> /srv/cfg/deploy.toml`: a link whose target
/// lives in another folder. Edits at the target (in place, or a new file
/// renamed over it) are applied, and so is repointing the link, after which
/// the new target's folder is the one watched.
#[test]
fn link_to_another_folder_follows_its_target() {
    let site = Site::new("");
    let cfg = site.path("../srv/cfg");
    let other = site.path("../srv/other");
    std::fs::create_dir_all(&cfg).expect("create srv/cfg");
    std::fs::create_dir_all(&other).expect("create srv/other");
    let target = cfg.join("deploy.toml");
    std::fs::write(&target, watched("one").render()).expect("write the target");
    std::fs::remove_file(site.config_path()).expect("remove the plain config file");
    symlink(&target, site.config_path()).expect("link the config to its target");

    let server = spawn_watched(site);
    let watching = wait_for_log(&server, 0, WATCHING);
    wait_for_log(&server, 0, SAME_AS_CURRENT);
    server.assert_serving("one", 1);

    std::fs::write(&target, watched("two").render()).expect("edit the target in place");
    assert_watch_applied(&server, "two", 2);
    assert!(watching.contains("a link to "), "{watching}");

    rename_over(&target, &watched("three").render());
    assert_watch_applied(&server, "three", 3);

    // Repointed (atomically, by renaming a new link over the old one).
    let moved = other.join("moved.toml");
    std::fs::write(&moved, watched("four").render()).expect("write the new target");
    let from = server.stderr.len();
    let tmp = server.site.path("kiln.toml.link");
    symlink(&moved, &tmp).expect("make the new link");
    std::fs::rename(&tmp, server.site.config_path()).expect("repoint the link");
    assert_watch_applied(&server, "four", 4);
    let line = wait_for_log(&server, from, "a link to ");
    assert!(line.contains("moved.toml"), "{line}");

    rename_over(&moved, &watched("five").render());
    assert_watch_applied(&server, "five", 5);
}

/// Saves `text` at `path` the way editors and deploy tools do: a new file
/// renamed over the old one.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it over the old one");
}

/// A valid save whose reload failed for a reason that passes (here: pool
/// `extra`'s folder cannot be created, because a file is in the way, as a
/// database that is down) is retried on its own until it applies, with no
/// new save; the failures are in the history.
#[test]
fn save_that_failed_to_build_is_retried_until_it_applies() {
    let server = start_watched(&watched("one"));
    std::fs::write(server.site.path("blocked"), "").expect("put a file in the pool's way");
    let two = watched("two")
        .set_str("pools.extra.kind", "sqlite")
        .set_str("pools.extra.url", "blocked/extra.sqlite3")
        .set("pools.extra.max_size", "1")
        .set("pools.extra.warm", "1");
    server.site.write_config(&two.render());
    util::wait_until(
        util::APPLY_TIMEOUT,
        "a failed watch entry in /admin/history",
        || {
            server
                .history_of("watch")
                .iter()
                .any(|e| e["error"].is_string())
        },
    );
    let failure = &server.history_of("watch")[0];
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|e| e.contains("extra")),
        "the pool is named: {failure}"
    );
    wait_for_log(&server, 0, RETRYING);
    server.assert_serving("one", 1);

    std::fs::remove_file(server.site.path("blocked")).expect("clear the way");
    let generation = server.wait_for_greeting("two");
    let entry = server.wait_for_history_entry(generation);
    assert_eq!(entry["trigger"], json!("watch"), "{entry}");
    assert_eq!(entry["error"], Value::Null, "{entry}");
    assert_eq!(json_strings(&entry["rebuilt"]), ["extra"], "{entry}");
    assert_eq!(generation, 2);
}

/// The same with a database that is down: pool `extra` is on PostgreSQL
/// behind a proxy that has cut it off; once the proxy restores it, the save
/// applies on a retry, without a new save.
#[test]
fn save_whose_database_was_down_applies_once_it_is_back() {
    let config = |greeting: &str| watched(greeting).set_str("server.warm_timeout", "2s");
    let server = start_watched(&config("one"));
    let schema = util::postgres();
    let proxy = util::PgProxy::start(std::time::Duration::ZERO);
    proxy.cut();
    let two = config("two")
        .set_str("pools.extra.kind", "postgres")
        .set_str("pools.extra.url", &schema.url_at(&proxy.addr().to_string()))
        .set("pools.extra.max_size", "1")
        .set("pools.extra.warm", "1");
    server.site.write_config(&two.render());
    wait_for_log(&server, 0, RETRYING);
    let failure = &server.history_of("watch")[0];
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|e| e.contains("extra")),
        "the pool is named: {failure}"
    );
    server.assert_serving("one", 1);

    proxy.restore();
    let generation = server.wait_for_greeting("two");
    let entry = server.wait_for_history_entry(generation);
    assert_eq!(entry["error"], Value::Null, "{entry}");
    assert_eq!(json_strings(&entry["rebuilt"]), ["extra"], "{entry}");
    assert_eq!(generation, 2);
}
