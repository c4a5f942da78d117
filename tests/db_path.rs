//! Where PostgreSQL connections are driven: on the worker whose requests use
//! them, so a query never wakes the main thread's control runtime.

use crate::util::{self, Config, Server};

/// Voluntary and involuntary context switches of the main thread (its
/// control runtime) so far: each time it woke up to do something.
fn control_wakeups(server: &Server) -> u64 {
    let pid = server.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status"))
        .expect("the main thread's status");
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn queries_run_without_waking_the_control_thread() {
    let pg = util::postgres();
    let config = Config::postgres(&pg.url())
        .set("server.workers", "2")
        .set("pools.main.max_size", "4")
        .set("pools.main.warm", "4");
    let server = Server::start(&config.render());
    let status = server.admin_get("/admin/status").json();
    assert_eq!(
        (
            status["pools"]["main"]["size"].as_u64(),
            status["pools"]["main"]["max_size"].as_u64()
        ),
        (Some(4), Some(4)),
        "max_size is the total over the workers: {status}"
    );

    let before = control_wakeups(&server);
    for _ in 0..300 {
        let reply = server.get("/notes?limit=1");
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let woke = control_wakeups(&server) - before;
    // Driven on the control runtime, every query woke it at least once (300+);
    // what is left is its timers (the pools' once-a-second top-up check).
    assert!(
        woke < 100,
        "the control thread woke {woke} times during 300 queries"
    );
}
