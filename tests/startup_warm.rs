//! Warm before bind: no port accepts until every pool connection is open and
//! every worker is warm, and the first wave of traffic opens no new database
//! connection.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, Config, PgProxy, Server, Site};

#[test]
fn ports_open_only_after_pool_is_warm_and_first_wave_opens_no_connection() {
    let pg = util::postgres();
    // The delay widens the window in which binding before warm-up is caught.
    let proxy = PgProxy::start(Duration::from_millis(300));
    let (main, admin) = util::free_addr_pair();
    let config = Config::postgres(&pg.url_at(&proxy.addr().to_string()))
        .set("pools.main.max_size", "4")
        .set("pools.main.warm", "4")
        .listen_on(main, admin);
    let mut server = Server::spawn(Site::new(&config.render()), &[]);

    // Poll both ports from the first moment. The live count is read before
    // each attempt, so it can only understate what existed at accept time.
    let deadline = Instant::now() + util::READY_TIMEOUT;
    let live_at_first_accept = loop {
        let live = proxy.live();
        if util::accepts(main) || util::accepts(admin) {
            break live;
        }
        assert!(
            server.try_wait_exit(Duration::ZERO).is_none(),
            "kiln exited before it ever listened"
        );
        assert!(
            Instant::now() < deadline,
            "no port accepted within {:?}",
            util::READY_TIMEOUT
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        live_at_first_accept, 4,
        "a port accepted while {live_at_first_accept} of the 4 warm connections were open"
    );
    server.wait_ready();
    assert_eq!(
        server.main_addr(),
        main,
        "ready line names the configured main address"
    );
    assert_eq!(
        proxy.accepted(),
        4,
        "warm-up opened exactly `warm` = `max_size` connections"
    );

    // The first wave: 16 requests released together, each on its own connection.
    let barrier = Arc::new(Barrier::new(16));
    let wave: Vec<_> = (0..16)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), server.url("/notes"));
            thread::spawn(move || {
                let agent = util::agent();
                barrier.wait();
                util::call(&agent, "GET", &url, &[], None).map(|r| (r.status, r.body))
            })
        })
        .collect();
    let results: Vec<_> = wave.into_iter().map(|t| t.join().unwrap()).collect();
    for result in &results {
        assert!(
            matches!(result, Ok((200, _))),
            "first-wave request failed: {result:?}"
        );
    }
    assert_eq!(
        proxy.accepted(),
        4,
        "the first wave opened new database connections"
    );
}

#[test]
fn ready_server_answers_greeting_health_and_readiness() {
    let server = Server::start(&Config::sqlite().greeting("warm hello").render());
    let ready = server
        .stderr
        .wait_for(0, "ready: ", Duration::ZERO)
        .unwrap();
    assert!(ready.contains("ready: 2 workers"), "{ready}");

    let root = server.get("/");
    assert_eq!(root.status, 200, "{root:?}");
    assert_eq!(root.body, "warm hello");
    assert!(
        root.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{root:?}"
    );
    assert_eq!(root.generation(), 1, "the first generation is 1");
    for path in ["/healthz", "/readyz"] {
        let reply = server.get(path);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.generation(), 1, "{path} carries X-Config-Generation");
    }
}

#[test]
fn zero_workers_means_one_per_core() {
    let cores = thread::available_parallelism().unwrap().get();
    let server = Server::start(&Config::sqlite().set("server.workers", "0").render());
    let ready = server
        .stderr
        .wait_for(0, "ready: ", Duration::ZERO)
        .unwrap();
    assert!(
        ready.contains(&format!("ready: {cores} workers")),
        "{cores} cores: {ready}"
    );
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let server = Server::start(&Config::sqlite().set_str("log.format", "json").render());
    for line in server.stderr.snapshot() {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&line) {
            panic!("log.format = json, yet a stderr line is not JSON ({e}): {line}");
        }
    }
}

#[test]
fn reuse_port_gives_each_worker_its_own_listener() {
    let listeners = |reuse_port: bool| {
        let server = Server::start(
            &Config::sqlite()
                .set("server.workers", "2")
                .set("server.reuse_port", &reuse_port.to_string())
                .render(),
        );
        // Every connection the kernel spreads over the sockets is served.
        for _ in 0..20 {
            let reply = server.get_on_new_connection("/");
            assert_eq!(reply.status, 200, "{reply:?}");
        }
        util::listening_sockets(server.main_addr().port())
    };
    // Shared: the workers accept on clones of one socket. reuse_port: each
    // worker has a socket of its own on the same port.
    assert_eq!(listeners(false), 1, "shared listener");
    assert_eq!(listeners(true), 2, "one SO_REUSEPORT socket per worker");
}
