//! Many reloads while clients hammer `GET /`: no request fails, and every
//! response is wholly of one generation (its body is that generation's
//! greeting).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

use crate::util::{self, Config, Server};

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

fn hammer(url: String, stop: Arc<AtomicBool>) -> Seen {
    let agent = util::agent(); // one kept-alive connection per client
    let mut seen = Seen::default();
    while !stop.load(SeqCst) {
        match util::call(&agent, "GET", &url, &[], None) {
            Ok(reply) if reply.status == 200 => {
                match reply.header("x-config-generation").map(str::parse) {
                    Some(Ok(generation)) => seen.ok.push((generation, reply.body)),
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
    let config = |greeting: &str| Config::sqlite().greeting(greeting).render();
    let server = Server::start(&config("v0"));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, stop) = (server.url("/"), stop.clone());
            thread::spawn(move || hammer(url, stop))
        })
        .collect();

    let mut greetings = BTreeMap::from([(1, "v0".to_owned())]);
    let mut took_ms = Vec::new();
    for k in 1..=RELOADS {
        let greeting = format!("v{k}");
        server.site.write_config(&config(&greeting));
        let reply = server.reload();
        assert_eq!(reply.status, 200, "reload {k}: {reply:?}");
        let body = reply.json();
        let generation = body["generation"].as_u64().unwrap();
        assert_eq!(body["previous"].as_u64(), Some(generation - 1), "{body}");
        took_ms.push(body["took_ms"].as_u64().unwrap_or_default());
        greetings.insert(generation, greeting);
        // Let the clients see each generation for a moment.
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, SeqCst);
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let served: usize = seen.iter().map(|s| s.ok.len()).sum();
    let failed: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    let mut mixed = Vec::new();
    let mut generations_seen = BTreeSet::new();
    for (client, s) in seen.iter().enumerate() {
        let mut last = 0;
        for (generation, body) in &s.ok {
            generations_seen.insert(*generation);
            if greetings.get(generation) != Some(body) {
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
    assert!(
        seen.iter().all(|s| !s.ok.is_empty()) && generations_seen.len() > 1,
        "the clients did not run across reloads"
    );
}
