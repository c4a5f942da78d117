//! `[reload] watch = true`: a change to the file's text is applied after a
//! quiet period, however it is saved (in place, write-and-rename, a
//! Kubernetes ConfigMap's symlink swap); the same bytes do not reload, a bad
//! save is logged once and left, and a burst of saves makes one or two
//! reloads.

use std::os::unix::fs::symlink;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{self, Config, Server, Site, json_strings};

/// The default `reload.debounce` (a test that sets it sets it lower).
const DEBOUNCE: Duration = Duration::from_millis(250);

fn watched(greeting: &str) -> Config {
    Config::sqlite()
        .set("reload.watch", "true")
        .greeting(greeting)
}

/// Gives the watcher several quiet periods to handle the last event on its
/// own, before the test makes the next change. Not an assertion on time: on
/// a slow machine the two changes may merge, and the test still passes.
fn let_the_watcher_settle() {
    thread::sleep(DEBOUNCE * 4);
}

/// Serves `config` with the watch given time to be armed: kiln logs `ready:`
/// a moment before it watches the file (see
/// `save_right_after_ready_is_applied`), and these tests are about what
/// happens once it does.
fn start_watched(config: &Config) -> Server {
    let server = Server::start(&config.render());
    let_the_watcher_settle();
    server
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
    let_the_watcher_settle();
    server.site.write_config_in_place(&two);
    let_the_watcher_settle();
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
    let server = Server::start(&watched("one").render());
    server.site.write_config(&watched("two").render());
    assert_watch_applied(&server, "two", 2);
}

/// A save that lands while the server warms up (after it read the file,
/// before it watches it) is applied once the watch is armed: the served text
/// must catch up with the file's.
#[test]
fn save_during_start_up_is_applied_once_watching() {
    let mut server = Server::spawn(Site::new(&watched("one").render()), &[]);
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
    let mut server = Server::spawn(site, &[]);
    server.wait_ready();
    let_the_watcher_settle();
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

    // The same bad bytes saved again are not tried again.
    let_the_watcher_settle();
    server.site.write_config(&bad);
    let_the_watcher_settle();
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

#[test]
fn burst_of_50_saves_reloads_once_or_twice() {
    let server = start_watched(&watched("start"));
    for i in 0..50 {
        server
            .site
            .write_config(&watched(&format!("burst {i}")).render());
        thread::sleep(Duration::from_millis(2));
    }
    let generation = server.wait_for_greeting("burst 49");
    server.wait_for_history_entry(generation);
    let reloads = server.history_of("watch");
    assert!(
        (1..=2).contains(&reloads.len()),
        "50 saves in a burst made {} watch reloads: {reloads:#?}",
        reloads.len()
    );
    assert!(reloads.iter().all(|e| e["error"].is_null()), "{reloads:#?}");
    assert_eq!(generation, 1 + reloads.len() as u64, "{reloads:#?}");
}

#[test]
fn watch_is_off_by_default_and_a_reload_can_turn_it_on() {
    let plain = |greeting: &str| Config::sqlite().greeting(greeting).render();
    let server = start_watched(&Config::sqlite().greeting("one"));
    server.site.write_config(&plain("two"));
    let_the_watcher_settle();
    server.assert_serving("one", 1);
    assert!(server.history().is_empty(), "{:#?}", server.history());

    server.site.write_config(&watched("three").render());
    assert_eq!(server.reload().status, 200);
    server.assert_serving("three", 2);
    let_the_watcher_settle();
    server.site.write_config(&watched("four").render());
    assert_watch_applied(&server, "four", 3);
}

#[test]
fn own_writes_by_patch_and_rollback_do_not_reload_again() {
    let server = start_watched(&watched("one").set_str("reload.debounce", "100ms"));
    let reply = server.patch_config(&json!({"app": {"greeting": "two"}}));
    assert_eq!(reply.status, 200, "{reply:?}");
    let_the_watcher_settle();
    assert_eq!(server.rollback().status, 200);
    let_the_watcher_settle();
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
