//! A fleet: several real `kiln` processes follow one document in PostgreSQL.
//! A PATCH on any instance publishes a version (a compare-and-swap on the
//! desired pointer); every instance applies it through its reload path and
//! reports ACK or NACK in its row, which `/admin/fleet` shows. Each test has
//! a fleet of its own (named after its schema); the store is the machine's
//! PostgreSQL, or a proxy in front of it that the test cuts.

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::metrics_endpoint::{metrics, promtool_check, sample};
use crate::util::{self, Config, PgProxy, PgSchema, Reply, Server, Site, wait_until};

/// How long convergence may take on a busy machine (debug build, several
/// servers per test, two tests at once).
pub(crate) const CONVERGE: Duration = Duration::from_secs(30);

/// Instance `name` of the test's fleet, with the store at `store`.
fn member_at(pg: &PgSchema, store: &str, name: &str) -> Config {
    Config::sqlite()
        .set("server.workers", "1")
        .set_str("fleet.store", store)
        .set_str("fleet.name", pg.name())
        .set_str("fleet.instance", &instance(pg, name))
        .set_str("fleet.heartbeat", "1s")
}

pub(crate) fn member(pg: &PgSchema, name: &str) -> Config {
    member_at(pg, &pg.url(), name)
}

/// Instance names are unique across the tests sharing the database, since
/// they name the store connections (`application_name`).
pub(crate) fn instance(pg: &PgSchema, name: &str) -> String {
    format!("{}-{name}", pg.name())
}

/// `PATCH /admin/config{query}` with `patch` and extra headers.
fn patch(server: &Server, query: &str, patch: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    util::call(
        &util::agent(),
        "PATCH",
        &server.admin_url(&format!("/admin/config{query}")),
        &all,
        Some(&patch.to_string()),
    )
    .unwrap_or_else(|e| panic!("PATCH failed: {e}"))
}

pub(crate) fn fleet(server: &Server) -> Value {
    let reply = server.admin_get("/admin/fleet");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// The states `/admin/fleet` shows, by instance.
fn states(view: &Value) -> Vec<(String, String)> {
    view["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("no instances: {view}"))
        .iter()
        .map(|row| {
            (
                row["instance"].as_str().unwrap().to_owned(),
                row["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits until `/admin/fleet` on `server` shows `expected` (instance, state)
/// rows, in name order.
pub(crate) fn wait_for_states(server: &Server, expected: &[(String, &str)]) -> Value {
    let mut view = Value::Null;
    wait_until(
        CONVERGE,
        &format!("/admin/fleet to show {expected:?}"),
        || {
            view = fleet(server);
            let seen = states(&view);
            seen.len() == expected.len()
                && seen
                    .iter()
                    .zip(expected)
                    .all(|((i, s), (ei, es))| i == ei && s == es)
        },
    );
    view
}

#[test]
fn three_instances_converge_after_a_patch_on_one() {
    let pg = util::postgres();
    let servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|name| Server::start(&member(&pg, name).greeting("local").render()))
        .collect();
    assert!(
        servers[0].stderr.text().contains("Following the fleet"),
        "{}",
        servers[0].stderr.text()
    );
    // No version yet: every instance serves its own file, ETag 0.
    assert_eq!(servers[0].config_etag(), "\"0\"");

    let reply = patch(
        &servers[0],
        "?wait=all",
        &json!({"app": {"greeting": "from the fleet"}}),
        &[("if-match", "\"0\"")],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(
        body["fleet_version"].as_u64().unwrap(),
        body_version(&servers[0]),
        "{body}"
    );
    let version = body["fleet_version"].as_u64().unwrap();
    // This instance applied it before answering.
    servers[0].assert_serving("from the fleet", body["generation"].as_u64().unwrap());
    let rows = body["instances"]
        .as_array()
        .expect("wait=all lists the instances");
    assert_eq!(rows.len(), 3, "{body}");
    for row in rows {
        assert_eq!(row["state"], "in-sync", "{body}");
        assert_eq!(row["applied"].as_u64(), Some(version), "{body}");
    }
    for server in &servers[1..] {
        server.wait_for_greeting("from the fleet");
        assert_eq!(server.config_etag(), format!("\"{version}\""));
        let history = server.history_of("fleet");
        assert_eq!(history.len(), 1, "{history:?}");
    }
    let expected: Vec<(String, &str)> = ["a", "b", "c"]
        .iter()
        .map(|n| (instance(&pg, n), "in-sync"))
        .collect();
    let view = wait_for_states(&servers[2], &expected);
    assert_eq!(view["desired"]["version"].as_u64(), Some(version), "{view}");
    assert_eq!(view["store"]["state"], "connected", "{view}");
    assert!(
        view["desired"]["author"]
            .as_str()
            .unwrap()
            .contains(&instance(&pg, "a")),
        "{view}"
    );
    // The document is the shared part only: the local file is untouched.
    assert!(
        servers[1]
            .site
            .read_config()
            .contains("greeting = \"local\"")
    );

    // Its metrics agree with /admin/fleet.
    let row = view["instances"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["instance"] == instance(&pg, "c")))
        .cloned()
        .unwrap_or_else(|| panic!("instance c in {view}"));
    let mut text = String::new();
    wait_until(CONVERGE, "the metrics to show the ACK", || {
        text = metrics(&servers[2]);
        sample(&text, "kiln_fleet_last_ack_timestamp_seconds", &[]).is_some_and(|at| at > 0.0)
    });
    #[allow(clippy::cast_precision_loss)] // small version ids
    let applied = row["applied"].as_u64().map(|v| v as f64);
    assert_eq!(applied, Some(version as f64), "{row}");
    assert_eq!(
        sample(&text, "kiln_fleet_applied_version", &[]),
        applied,
        "{text}"
    );
    assert_eq!(
        sample(&text, "kiln_fleet_desired_version", &[]),
        applied,
        "{text}"
    );
    assert_eq!(
        sample(&text, "kiln_fleet_store_connected", &[]),
        Some(1.0),
        "{text}"
    );
    let acked_at = sample(&text, "kiln_fleet_last_ack_timestamp_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now + 1.0).contains(&acked_at),
        "{acked_at} vs {now}"
    );
    promtool_check(&text);
}

/// The fleet version `GET /admin/config` names as its ETag.
fn body_version(server: &Server) -> u64 {
    server.config_etag().trim_matches('"').parse().unwrap()
}

#[test]
fn two_concurrent_patches_from_the_same_version_one_wins_one_gets_412() {
    let pg = util::postgres();
    let a = Server::start(&member(&pg, "a").render());
    let b = Server::start(&member(&pg, "b").render());
    let first = patch(&a, "", &json!({"app": {"greeting": "v1"}}), &[]);
    assert_eq!(first.status, 200, "{first:?}");
    b.wait_for_greeting("v1");
    let etag = a.config_etag();
    assert_eq!(b.config_etag(), etag);

    let barrier = Barrier::new(2);
    let replies: Vec<Reply> = thread::scope(|scope| {
        let racers: Vec<_> = [(&a, "from a"), (&b, "from b")]
            .into_iter()
            .map(|(server, greeting)| {
                let (barrier, etag) = (&barrier, &etag);
                scope.spawn(move || {
                    barrier.wait();
                    patch(
                        server,
                        "",
                        &json!({"app": {"greeting": greeting}}),
                        &[("if-match", etag)],
                    )
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{replies:?}");
    let lost = replies.iter().find(|r| r.status == 412).unwrap();
    assert!(
        lost.json()["error"].as_str().unwrap().contains("fleet"),
        "{lost:?}"
    );
    let won = replies.iter().position(|r| r.status == 200).unwrap();
    let greeting = ["from a", "from b"][won];
    a.wait_for_greeting(greeting);
    b.wait_for_greeting(greeting);
}

#[test]
fn an_instance_whose_environment_makes_the_document_invalid_rejects_it_and_keeps_serving() {
    let pg = util::postgres();
    let a = Server::start(&member(&pg, "a").render());
    let b = Server::start(&member(&pg, "b").render());
    // Its own file warms 2 of its 2 connections; the fleet asks for 4.
    let c = Server::start_with(
        &member(&pg, "c").set("pools.main.warm", "2").render(),
        &[("KILN__POOLS__MAIN__MAX_SIZE", "2")],
    );
    let c_generation = c.status_generation();

    let reply = patch(
        &a,
        "?wait=all",
        &json!({"app": {"greeting": "warm four"}, "pools": {"main": {"warm": 4}}}),
        &[],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    let rows = body["instances"].as_array().unwrap();
    let row_c = rows
        .iter()
        .find(|r| r["instance"] == instance(&pg, "c"))
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(row_c["state"], "rejected", "{body}");
    assert_eq!(row_c["key"], "pools.main.warm", "{body}");
    assert!(
        row_c["error"].as_str().unwrap().contains("max_size (2)"),
        "{body}"
    );
    b.wait_for_greeting("warm four");
    // c keeps serving its last good generation.
    c.assert_serving("Hello from kiln", c_generation);
    let expected = [
        (instance(&pg, "a"), "in-sync"),
        (instance(&pg, "b"), "in-sync"),
        (instance(&pg, "c"), "rejected"),
    ];
    let view = wait_for_states(&c, &expected);
    assert!(view.to_string().contains("pools.main.warm"), "{view}");
    // The store has the NACK; its log line may still be in the pipe.
    assert!(
        c.stderr
            .wait_for(0, "Rejected the fleet's version (NACK)", CONVERGE)
            .is_some(),
        "{}",
        c.stderr.text()
    );
}

#[test]
fn an_instance_whose_listen_connection_is_killed_converges_without_a_new_write() {
    let pg = util::postgres();
    let a = Server::start(&member(&pg, "a").render());
    // Polls too rarely to matter: reconnecting is what brings it up to date.
    let b = Server::start(&member(&pg, "b").set_str("fleet.poll", "10m").render());
    let listen = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kiln fleet listen {}'",
        instance(&pg, "b")
    );
    wait_until(CONVERGE, "b's LISTEN connection", || {
        util::pg_query_i64(&listen) == 1
    });
    let killed =
        util::pg_query_i64(&listen.replace("count(*)", "count(pg_terminate_backend(pid))"));
    assert_eq!(killed, 1);
    for greeting in ["missed 1", "missed 2"] {
        let reply = patch(&a, "", &json!({"app": {"greeting": greeting}}), &[]);
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    b.wait_for_greeting("missed 2");
    assert_eq!(b.config_etag(), a.config_etag());
    wait_until(CONVERGE, "b's LISTEN connection again", || {
        util::pg_query_i64(&listen) == 1
    });
}

#[test]
fn without_notifications_an_instance_converges_within_the_poll_period() {
    let pg = util::postgres();
    let a = Server::start(&member(&pg, "a").render());
    let b = Server::start(
        &member(&pg, "b")
            .set("fleet.listen", "false")
            .set_str("fleet.poll", "1s")
            .render(),
    );
    assert!(
        b.stderr.wait_for(0, "polling only", CONVERGE).is_some(),
        "{}",
        b.stderr.text()
    );
    let reply = patch(&a, "", &json!({"app": {"greeting": "polled"}}), &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    b.wait_for_greeting("polled");
    let listens = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kiln fleet listen {}'",
        instance(&pg, "b")
    );
    assert_eq!(util::pg_query_i64(&listens), 0, "b never listens");
}

#[test]
fn a_store_outage_keeps_serving_refuses_patches_with_503_and_resyncs_after() {
    let pg = util::postgres();
    let proxy = PgProxy::start(Duration::ZERO);
    let a = Server::start(
        &member_at(&pg, &pg.url_at(&proxy.addr().to_string()), "a")
            .set_str("fleet.poll", "2s")
            .render(),
    );
    let b = Server::start(&member(&pg, "b").render());
    let first = patch(&b, "", &json!({"app": {"greeting": "before"}}), &[]);
    assert_eq!(first.status, 200, "{first:?}");
    let generation = a.wait_for_greeting("before");

    proxy.cut();
    wait_until(CONVERGE, "a to see the store disconnected", || {
        fleet(&a)["store"]["state"] == "disconnected"
    });
    let view = fleet(&a);
    assert!(view["store"]["since"].is_string(), "{view}");
    assert!(view["instances"].is_null(), "{view}");
    let status = a.admin_get("/admin/status").json();
    assert!(
        status["fleet_store"]
            .as_str()
            .unwrap()
            .starts_with("disconnected since"),
        "{status}"
    );
    assert_eq!(a.get("/readyz").status, 200);
    a.assert_serving("before", generation);

    let refused = patch(&a, "", &json!({"app": {"greeting": "during"}}), &[]);
    assert_eq!(refused.status, 503, "{refused:?}");
    let error = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("fleet store"), "{error}");
    assert!(error.contains("unreachable"), "{error}");
    a.assert_serving("before", generation);

    // Published elsewhere meanwhile; a picks it up once the store is back.
    let elsewhere = patch(&b, "", &json!({"app": {"greeting": "after"}}), &[]);
    assert_eq!(elsewhere.status, 200, "{elsewhere:?}");
    proxy.restore();
    a.wait_for_greeting("after");
    wait_until(CONVERGE, "a to see the store connected", || {
        fleet(&a)["store"]["state"] == "connected"
    });
}

#[test]
fn a_restart_applies_the_latest_and_without_the_store_starts_from_its_cache() {
    let pg = util::postgres();
    let proxy = PgProxy::start(Duration::ZERO);
    let through_proxy = member_at(&pg, &pg.url_at(&proxy.addr().to_string()), "a");
    let a = Server::start(&through_proxy.render());
    let b = Server::start(&member(&pg, "b").render());
    let reply = patch(&b, "", &json!({"app": {"greeting": "cached"}}), &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    a.wait_for_greeting("cached");
    wait_until(CONVERGE, "a's cache", || {
        a.site.path("kiln.fleet-cache.json").is_file()
    });
    let site = a.site.clone();
    drop(a);

    // Published while a was down: a restart applies it at start.
    let reply = patch(&b, "", &json!({"app": {"greeting": "latest"}}), &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let mut restarted = Server::spawn(site.clone(), &[]);
    restarted.wait_ready();
    restarted.assert_serving("latest", 1);
    let cache = site.path("kiln.fleet-cache.json");
    wait_until(CONVERGE, "the cache to hold the latest version", || {
        std::fs::read_to_string(&cache).is_ok_and(|text| text.contains("latest"))
    });
    drop(restarted);

    // The store away: it starts from the cached document, and says so.
    proxy.cut();
    let mut cached = Server::spawn(site, &[]);
    cached.wait_ready();
    assert_eq!(cached.get("/").body, "latest");
    assert!(
        cached
            .stderr
            .text()
            .contains("THE FLEET STORE IS UNREACHABLE"),
        "{}",
        cached.stderr.text()
    );
    drop(cached);

    // Without a cache it refuses to start, naming what is missing.
    let fresh = Site::new(&member_at(&pg, &pg.url_at(&proxy.addr().to_string()), "c").render());
    let out = util::run(fresh.command().arg(fresh.config_path()));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("no cached fleet document"), "{out:?}");
}

#[test]
fn a_fleet_document_may_not_set_admin_or_fleet() {
    let pg = util::postgres();
    let a = Server::start(&member(&pg, "a").render());
    let generation = a.status_generation();
    for section in ["admin", "fleet"] {
        let reply = patch(&a, "", &json!({section: {"listen": "127.0.0.1:1"}}), &[]);
        let body = util::assert_refused(&reply, 422, generation);
        assert_eq!(body["key"], section, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains(&format!("no [{section}]")),
            "{body}"
        );
    }
    assert_eq!(a.config_etag(), "\"0\"", "nothing was published");
    let not_fleet = Server::start(&Config::sqlite().render());
    let reply = not_fleet.admin_get("/admin/fleet");
    util::assert_refused(&reply, 409, 1);
    assert!(reply.body.contains("not in a fleet"), "{reply:?}");
}

/// `POST /admin/fleet/{publish,rollback}` with `?wait=all`.
pub(crate) fn post(server: &Server, path: &str, body: Option<&Value>) -> Reply {
    let body = body.map(Value::to_string);
    util::call(
        &util::agent(),
        "POST",
        &server.admin_url(path),
        &[("content-type", "application/json")],
        Some(body.as_deref().unwrap_or("")),
    )
    .unwrap_or_else(|e| panic!("POST {path} failed: {e}"))
}

#[test]
fn a_whole_document_is_published_with_its_message_and_rolled_back_as_a_new_version() {
    let pg = util::postgres();
    let a = Server::start(&member(&pg, "a").render());
    let b = Server::start(&member(&pg, "b").render());
    let rollback = post(&a, "/admin/fleet/rollback", None);
    let body = util::assert_refused(&rollback, 409, 1);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("nothing to roll back"),
        "{body}"
    );

    let mut versions = Vec::new();
    for greeting in ["one", "two"] {
        let document = format!("[app]\ngreeting = \"{greeting}\"\n");
        let reply = post(
            &a,
            "/admin/fleet/publish?wait=all",
            Some(&json!({"document": document, "message": format!("say {greeting}")})),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        let body = reply.json();
        assert_eq!(
            states(&json!({"instances": body["instances"]})).len(),
            2,
            "{body}"
        );
        versions.push(body["fleet_version"].as_u64().unwrap());
    }
    b.wait_for_greeting("two");
    let view = fleet(&b);
    assert_eq!(view["desired"]["message"], "say two", "{view}");
    assert_eq!(
        view["desired"]["parent"].as_u64(),
        Some(versions[0]),
        "{view}"
    );

    // A document that sets [admin] is refused before anything is published.
    let refused = post(
        &a,
        "/admin/fleet/publish",
        Some(&json!({"document": "[admin]\ntoken = \"x\"\n"})),
    );
    util::assert_refused(&refused, 422, a.status_generation());

    let reply = post(&a, "/admin/fleet/rollback?wait=all", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    let rolled = reply.json()["fleet_version"].as_u64().unwrap();
    assert!(rolled > versions[1], "a new version: {reply:?}");
    b.wait_for_greeting("one");
    let view = fleet(&b);
    assert_eq!(
        view["desired"]["message"],
        format!("rollback from version {} to {}", versions[1], versions[0]),
        "{view}"
    );
    assert_eq!(b.history_of("fleet").len(), 3, "{:?}", b.history());
    let applied = a.history_of("publish");
    let applied: Vec<_> = applied
        .iter()
        .filter(|e| !e["generation"].is_null())
        .collect();
    assert_eq!(applied.len(), 3, "{:?}", a.history());
}

#[test]
fn kiln_fleet_push_and_status_drive_the_fleet_through_the_admin_api() {
    let pg = util::postgres();
    let a = Server::start(&member(&pg, "a").render());
    let b = Server::start_with(
        &member(&pg, "b").set("pools.main.warm", "2").render(),
        &[("KILN__POOLS__MAIN__MAX_SIZE", "2")],
    );
    let admin = format!("http://{}", a.admin_addr());
    let push = |document: &str| {
        let file = a.site.path("shared.toml");
        std::fs::write(&file, document).unwrap();
        util::run(
            util::kiln_command()
                .args(["fleet", "push", "-m", "from the CLI", "--admin", &admin])
                .arg(&file),
        )
    };

    let out = push("[app]\ngreeting = \"pushed\"\n");
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains(": 2/2 applied"), "{out:?}");
    b.wait_for_greeting("pushed");

    let out = push("[app]\ngreeting = \"warmer\"\n[pools.main]\nwarm = 4\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("1/2 applied, 1 rejected"), "{out:?}");
    assert!(
        out.stdout.contains(&format!("{}: ", instance(&pg, "b"))),
        "{out:?}"
    );
    assert!(out.stdout.contains("pools.main.warm"), "{out:?}");

    let out = util::run(util::kiln_command().args(["fleet", "status", "--admin", &admin]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("from the CLI"), "{out:?}");
    for (name, state) in [("a", "in-sync"), ("b", "rejected")] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&instance(&pg, name)))
            .unwrap_or_else(|| panic!("no line for {name}: {out:?}"));
        assert!(line.contains(state), "{line}");
    }
    // A refused publish (an [admin] section) exits 1 naming why.
    let out = push("[admin]\ntoken = \"x\"\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no [admin]"), "{out:?}");
}
