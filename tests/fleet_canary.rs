//! Canary rollouts across real `kiln` processes on the machine's
//! PostgreSQL: a version goes to a cohort first, to everyone after every
//! member's ACK and the hold; a NACK in the cohort halts it and returns the
//! cohort to the previous version; the cohort is stored, so a restart does
//! not change it; and the rollout is driven by whichever instance holds the
//! fleet's rollout lock, so it completes when the publisher is gone.

use std::thread;

use serde_json::{Value, json};

use crate::fleet::{CONVERGE, fleet, instance, member, post};
use crate::util::{self, PgSchema, Server, wait_until};

/// Three instances `a`, `b`, `c` serving fleet version "one", with the
/// environment `env` of each.
fn three(pg: &PgSchema, env: [&[(&str, &str)]; 3]) -> Vec<(String, Server)> {
    let servers: Vec<(String, Server)> = ["a", "b", "c"]
        .iter()
        .zip(env)
        .map(|(name, env)| {
            let config = member(pg, name).set("pools.main.warm", "2").render();
            (instance(pg, name), Server::start_with(&config, env))
        })
        .collect();
    let reply = publish(&servers[0].1, json!({"document": document("one", 2)}));
    assert_eq!(
        reply["instances"].as_array().map(Vec::len),
        Some(3),
        "{reply}"
    );
    for (_, server) in &servers {
        server.wait_for_greeting("one");
    }
    servers
}

fn document(greeting: &str, warm: u32) -> String {
    format!("[app]\ngreeting = \"{greeting}\"\n[pools.main]\nwarm = {warm}\n")
}

/// `POST /admin/fleet/publish?wait=all` with `body`: its answer.
fn publish(server: &Server, body: Value) -> Value {
    publish_at(server, "/admin/fleet/publish?wait=all", body)
}

/// `POST {path}` with `body`: its answer.
fn publish_at(server: &Server, path: &str, body: Value) -> Value {
    let reply = post(server, path, Some(&body));
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// Waits until `/admin/fleet` on `server` shows the rollout in `phase`.
fn wait_for_phase(server: &Server, phase: &str) -> Value {
    let mut view = Value::Null;
    wait_until(CONVERGE, &format!("the rollout to be {phase}"), || {
        view = fleet(server);
        view["rollout"]["phase"] == phase
    });
    view
}

fn cohort(view: &Value) -> Vec<String> {
    let cohort = view["rollout"]["cohort"].as_array();
    let cohort = cohort.unwrap_or_else(|| panic!("no cohort: {view}"));
    cohort
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_canary_goes_to_its_cohort_and_to_the_others_only_after_the_hold() {
    let pg = util::postgres();
    let servers = three(&pg, [&[], &[], &[]]);
    let (_, a) = &servers[0];
    let admin = format!("http://{}", a.admin_addr());
    let file = a.site.path("two.toml");
    std::fs::write(&file, document("two", 2)).unwrap();
    let mut push = util::kiln_command();
    push.args([
        "fleet",
        "push",
        "--canary",
        "1",
        "--hold",
        "2s",
        "-m",
        "canary two",
    ])
    .args(["--admin", &admin])
    .arg(&file);

    let out = thread::scope(|scope| {
        let cli = scope.spawn(|| util::run(&mut push));
        let view = wait_for_phase(a, "holding");
        let members = cohort(&view);
        assert_eq!(members.len(), 1, "{view}");
        assert!(view["rollout"]["promote_at"].is_string(), "{view}");
        // Holding: the cohort serves the new version, the others the old.
        for (name, server) in &servers {
            let expected = if members.contains(name) { "two" } else { "one" };
            assert_eq!(
                server.get("/").body,
                expected,
                "{name} while holding: {view}"
            );
        }
        let rows = view["instances"].as_array().unwrap();
        assert!(rows.iter().all(|r| r["state"] == "in-sync"), "{view}");
        cli.join().unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("canary 1 to "), "{out:?}");
    assert!(out.stdout.contains("(holding): 1/3 applied"), "{out:?}");
    assert!(out.stdout.contains("(promoted): 3/3 applied"), "{out:?}");
    for (_, server) in &servers {
        server.wait_for_greeting("two");
    }
    let view = fleet(a);
    assert_eq!(view["rollout"]["phase"], "promoted", "{view}");
    assert_eq!(view["desired"]["message"], "canary two", "{view}");
    assert!(view["rollout"]["steward"].is_string(), "{view}");

    // Bad canaries are refused before anything is published.
    let version = view["desired"]["version"].clone();
    for (body, needle) in [
        (
            json!({"document": document("x", 2), "canary": "0"}),
            "neither a count",
        ),
        (
            json!({"document": document("x", 2), "canary": "101%"}),
            "neither a count",
        ),
        (
            json!({"document": document("x", 2), "canary": "1", "hold": "soon"}),
            "not a duration",
        ),
        (
            json!({"document": document("x", 2), "hold": "1s"}),
            "hold needs a canary",
        ),
    ] {
        let reply = post(a, "/admin/fleet/publish", Some(&body));
        let refused = util::assert_refused(&reply, 400, a.status_generation());
        assert!(
            refused["error"].as_str().unwrap().contains(needle),
            "{refused}"
        );
    }
    assert_eq!(fleet(a)["desired"]["version"], version);
}

#[test]
fn a_nack_in_the_cohort_halts_the_rollout_and_returns_the_cohort_to_the_previous_version() {
    let pg = util::postgres();
    // c cannot warm 4 connections: it refuses the new version.
    let servers = three(&pg, [&[], &[], &[("KILN__POOLS__MAIN__MAX_SIZE", "2")]]);
    let (_, a) = &servers[0];
    let before = fleet(a)["desired"]["version"].as_u64().unwrap();
    // The whole fleet as the cohort: a and b apply it, c refuses it.
    let answer = publish(
        a,
        json!({"document": document("warmer", 4), "canary": "100%", "hold": "1m"}),
    );
    let rollout = &answer["rollout"];
    assert_eq!(rollout["phase"], "halted", "{answer}");
    assert_eq!(rollout["rejected_by"], instance(&pg, "c"), "{answer}");
    assert!(
        rollout["reason"]
            .as_str()
            .unwrap()
            .contains("pools.main.warm"),
        "{answer}"
    );
    let view = fleet(a);
    assert_eq!(view["desired"]["version"].as_u64(), Some(before), "{view}");
    for (name, server) in &servers {
        server.wait_for_greeting("one");
        // a and b applied "one", then "warmer", then "one" again (generation
        // 4); c only "one" (generation 2).
        let expected = if name == &instance(&pg, "c") { 2 } else { 4 };
        assert_eq!(server.status_generation(), expected, "{name}");
    }
    let expected: Vec<(String, &str)> = servers
        .iter()
        .map(|(n, _)| (n.clone(), "in-sync"))
        .collect();
    crate::fleet::wait_for_states(a, &expected);
}

#[test]
fn the_cohort_is_the_same_after_an_instance_restarts() {
    let pg = util::postgres();
    let servers = three(&pg, [&[], &[], &[]]);
    let answer = publish_at(
        &servers[0].1,
        "/admin/fleet/publish",
        json!({"document": document("two", 2), "canary": "1", "hold": "10m"}),
    );
    let members = cohort(&answer);
    wait_for_phase(&servers[0].1, "holding");
    // Restart every instance, one by one: each serves what it served.
    let servers: Vec<(String, Server)> = servers
        .into_iter()
        .map(|(name, server)| {
            let expected = if members.contains(&name) {
                "two"
            } else {
                "one"
            };
            assert_eq!(server.get("/").body, expected, "{name}");
            let site = server.site.clone();
            drop(server);
            let mut restarted = Server::spawn(site, &[]);
            restarted.wait_ready();
            assert_eq!(
                restarted.get("/").body,
                expected,
                "{name} after its restart"
            );
            (name, restarted)
        })
        .collect();
    let view = fleet(&servers[2].1);
    assert_eq!(cohort(&view), members, "{view}");
    assert_eq!(view["rollout"]["phase"], "holding", "{view}");
}

#[test]
fn promotion_completes_when_the_publisher_and_the_steward_are_killed() {
    let pg = util::postgres();
    let servers = three(&pg, [&[], &[], &[]]);
    publish_at(
        &servers[0].1,
        "/admin/fleet/publish",
        json!({"document": document("two", 2), "canary": "1", "hold": "3s"}),
    );
    let view = wait_for_phase(&servers[0].1, "holding");
    let steward = view["rollout"]["steward"].as_str().unwrap().to_owned();
    // The publisher (a) and whichever instance drives the rollout die; the
    // last one standing takes the rollout lock and promotes.
    let (dead, alive): (Vec<_>, Vec<_>) = servers
        .into_iter()
        .enumerate()
        .partition(|(i, (name, _))| *i == 0 || *name == steward);
    drop(dead);
    let (_, (survivor_name, survivor)) = alive.into_iter().next().unwrap();
    let view = wait_for_phase(&survivor, "promoted");
    assert_eq!(view["rollout"]["steward"], survivor_name, "{view}");
    assert_ne!(survivor_name, steward);
    survivor.wait_for_greeting("two");
}
