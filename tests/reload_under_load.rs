//! Many reloads while clients hammer `GET /` and a database route, with
//! every fourth reload rebuilding the PostgreSQL pool: no request fails,
//! each client sees generations only move forward, and every `GET /`
//! response is wholly of one generation (its body is that generation's
//! greeting).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

use crate::util::{self, Config, Server};

/// Half on `GET /`, half on `GET /notes?limit=1` (the database).
const CLIENTS: usize = 4;
const RELOADS: u64 = 20;

/// What one client saw, in order.
#[derive(Default)]
struct Seen {
    /// (X-Config-Generation, body) of each 200.
    ok: Vec<(u64, String)>,
    failures: Vec<String>,
}

/// Stops the clients even when the test panics half-way.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Requests `url` until `stop`, publishing the last generation it saw.
fn hammer(url: String, stop: Arc<AtomicBool>, last: Arc<AtomicU64>) -> Seen {
    let agent = util::agent(); // one kept-alive connection per client
    let mut seen = Seen::default();
    while !stop.load(SeqCst) {
        match util::call(&agent, "GET", &url, &[], None) {
            Ok(reply) if reply.status == 200 => {
                match reply.header("x-config-generation").map(str::parse) {
                    Some(Ok(generation)) => {
                        last.store(generation, SeqCst);
                        seen.ok.push((generation, reply.body));
                    }
                    _ => seen
                        .failures
                        .push(format!("bad X-Config-Generation: {reply:?}")),
                }
            }
            Ok(reply) => seen.failures.push(format!("{reply:?}")),
            Err(e) => seen.failures.push(e.to_string()),
        }
    }
    seen
}

#[test]
fn reloads_under_load_never_fail_or_mix_generations() {
    let pg = util::postgres();
    let config = |k: u64, greeting: &str| {
        Config::postgres(&pg.url())
            .set("pools.main.max_size", &(4 + (k / 4) % 2).to_string())
            .set("server.warm_requests", r#"["/", "/notes?limit=1"]"#)
            .greeting(greeting)
            .render()
    };
    let server = Server::start(&config(0, "v0"));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = if i % 2 == 0 { "/" } else { "/notes?limit=1" };
            let (url, stop) = (server.url(path), stop.clone());
            let last = Arc::new(AtomicU64::new(0));
            (last.clone(), thread::spawn(move || hammer(url, stop, last)))
        })
        .collect();

    let mut greetings = BTreeMap::from([(1, "v0".to_owned())]);
    let mut took_ms = Vec::new();
    for k in 1..=RELOADS {
        let greeting = format!("v{k}");
        server.site.write_config(&config(k, &greeting));
        let reply = server.reload();
        assert_eq!(reply.status, 200, "reload {k}: {reply:?}");
        let body = reply.json();
        let generation = body["generation"].as_u64().unwrap();
        assert_eq!(body["previous"].as_u64(), Some(generation - 1), "{body}");
        if k % 4 == 0 {
            assert_eq!(
                util::json_strings(&body["rebuilt"]),
                ["main"],
                "reload {k} rebuilds the pool: {body}"
            );
        }
        took_ms.push(body["took_ms"].as_u64().unwrap_or_default());
        greetings.insert(generation, greeting);
        // Every client is served by the new generation before the next reload.
        util::wait_until(
            Duration::from_secs(30),
            &format!("every client to see generation {generation}"),
            || {
                clients
                    .iter()
                    .all(|(last, _)| last.load(SeqCst) >= generation)
            },
        );
    }
    stop.store(true, SeqCst);
    let seen: Vec<Seen> = clients
        .into_iter()
        .map(|(_, c)| c.join().unwrap())
        .collect();

    let served: usize = seen.iter().map(|s| s.ok.len()).sum();
    let failed: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    let mut mixed = Vec::new();
    let mut generations_seen = BTreeSet::new();
    for (client, s) in seen.iter().enumerate() {
        let mut last = 0;
        for (generation, body) in &s.ok {
            generations_seen.insert(*generation);
            let is_greeting = client % 2 == 0;
            if is_greeting && greetings.get(generation) != Some(body) {
                mixed.push(format!(
                    "client {client}: generation {generation} answered {body:?}"
                ));
            }
            // Requests on one client are sequential, so once a generation is
            // served, later requests never see an older one.
            if *generation < last {
                mixed.push(format!(
                    "client {client}: generation {generation} after {last}"
                ));
            }
            last = *generation;
        }
    }
    took_ms.sort_unstable();
    eprintln!(
        "reload under load: {served} requests served, {} failed, {} mismatched; \
         {RELOADS} reloads (median took_ms {}); {} generations seen by clients",
        failed.len(),
        mixed.len(),
        took_ms[took_ms.len() / 2],
        generations_seen.len()
    );
    let first = |v: &[String]| v.iter().take(20).cloned().collect::<Vec<_>>();
    let failed: Vec<String> = failed.into_iter().cloned().collect();
    assert!(
        failed.is_empty(),
        "failed requests, first 20: {:#?}",
        first(&failed)
    );
    assert!(
        mixed.is_empty(),
        "mismatched responses, first 20: {:#?}",
        first(&mixed)
    );
    let missing: Vec<u64> = (2..=RELOADS + 1)
        .filter(|g| !generations_seen.contains(g))
        .collect();
    assert!(missing.is_empty(), "generations no client saw: {missing:?}");
}
