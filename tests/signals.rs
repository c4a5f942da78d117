//! Signals: SIGHUP reloads exactly like the admin route; SIGTERM drains
//! (stop accepting, finish what is in flight, exit 0); SIGINT exits cleanly.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::util::{self, Config, PgProxy, Server, Site};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn sighup_reloads_like_the_route() {
    let config = |greeting: &str| Config::sqlite().greeting(greeting);
    let server = Server::start(&config("before").render());

    // A bad file first: logged naming the key, nothing applied.
    let mark = server.stderr.len();
    server
        .site
        .write_config(&config("bad").set("pools.main.max_size", "0").render());
    server.signal("HUP");
    assert!(
        server
            .stderr
            .wait_for(mark, "pools.main.max_size", WAIT)
            .is_some(),
        "the failed SIGHUP reload was not logged naming pools.main.max_size"
    );
    let root = server.get("/");
    assert_eq!((root.body.as_str(), root.generation()), ("before", 1));

    server.site.write_config(&config("after").render());
    server.signal("HUP");
    util::wait_until(WAIT, "SIGHUP to apply the new greeting", || {
        server.get("/").body == "after"
    });
    assert_eq!(
        server.get("/").generation(),
        2,
        "the failed reload consumed no id"
    );
}

/// Starts `GET /slow/{secs}` on a connection of its own, in a thread.
fn slow_request(server: &Server, secs: u64) -> thread::JoinHandle<Result<(u16, String), String>> {
    let url = server.url(&format!("/slow/{secs}"));
    thread::spawn(move || {
        util::call(&util::agent(), "GET", &url, &[], None)
            .map(|reply| (reply.status, reply.body))
            .map_err(|e| e.to_string())
    })
}

/// Waits until the server has logged `count` slow queries as started: the
/// requests are in flight, server-side.
fn wait_slow_started(server: &Server, count: usize) {
    util::wait_until(WAIT, &format!("{count} slow queries to start"), || {
        server.stderr.text().matches("Slow query started").count() >= count
    });
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let config = Config::sqlite().set_str("server.shutdown_grace", "30s");
    let mut server = Server::start(&config.render());
    let main = server.main_addr();

    let slow: Vec<_> = (0..3).map(|_| slow_request(&server, 2)).collect();
    wait_slow_started(&server, 3);
    server.signal("TERM");
    util::wait_until(
        WAIT,
        "the main port to refuse new connections after SIGTERM",
        || !util::accepts(main),
    );
    for request in slow {
        let answer = request.join().expect("the client thread");
        assert_eq!(
            answer,
            Ok((200, "slept 2s\n".to_owned())),
            "an in-flight request completes during the drain"
        );
    }
    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(0), "kiln exits 0 after draining ({exit})");
    assert!(
        server
            .stderr
            .wait_closed()
            .contains("Stopped: every in-flight request finished"),
        "no clean stop line"
    );
}

#[test]
fn sigterm_cuts_what_outlives_the_grace_and_exits_non_zero() {
    // A blocking query (SQLite's runs on the blocking pool) that outlives the
    // grace, and a client holding half a request head on the admin port.
    let config = |grace: &str| Config::sqlite().set_str("server.shutdown_grace", grace);
    let mut server = Server::start(&config("600s").render());
    // The grace is read when the drain starts: a reload changes it.
    server.site.write_config(&config("1s").render());
    assert_eq!(server.reload().status, 200, "shutdown_grace reloads");
    let _held = slow_request(&server, 300);
    wait_slow_started(&server, 1);
    let mut half = TcpStream::connect(server.admin_addr()).expect("connect to admin");
    half.write_all(b"GET /admin/status HTTP/1.1\r\nhost: kiln\r\n")
        .expect("send half a head");

    server.signal("TERM");
    let exit = server
        .try_wait_exit(WAIT)
        .unwrap_or_else(|| panic!("kiln did not exit within {WAIT:?} of SIGTERM with a 1s grace"));
    assert_eq!(
        exit.code(),
        Some(1),
        "cut requests make a non-zero exit ({exit})"
    );
    let log = server.stderr.wait_closed();
    let cut = log
        .lines()
        .find(|line| line.contains("they were cut"))
        .unwrap_or_else(|| panic!("no line saying what was cut:\n{log}"));
    assert!(
        cut.contains("server.shutdown_grace (1s) expired with"),
        "{cut}"
    );
}

#[test]
fn sigterm_during_warm_up_exits_non_zero_naming_the_phase() {
    let pg = util::postgres();
    // Every new database connection is held far longer than the test waits.
    let proxy = PgProxy::start(Duration::from_secs(600));
    let config = Config::postgres(&pg.url_at(&proxy.addr().to_string()))
        .set_str("server.warm_timeout", "600s");
    let mut server = Server::spawn(Site::new(&config.render()), &[]);
    server
        .stderr
        .wait_for(0, "Starting kiln", WAIT)
        .expect("the start-up line");
    util::wait_until(WAIT, "warm-up to reach the database", || {
        proxy.accepted() > 0
    });

    server.signal("TERM");
    let exit = server
        .try_wait_exit(WAIT)
        .unwrap_or_else(|| panic!("kiln did not exit within {WAIT:?} of SIGTERM during warm-up"));
    assert_eq!(
        exit.code(),
        Some(1),
        "non-zero, not killed by the signal ({exit})"
    );
    util::assert_error_line(
        &server.stderr.wait_closed(),
        &["SIGTERM while warming pools"],
    );
}

#[test]
fn drain_delay_keeps_serving_while_readyz_answers_503() {
    let config = |delay: &str| Config::sqlite().set_str("server.drain_delay", delay);
    let mut server = Server::start(&config("0s").render());
    // Reloadable: the drain uses the value current when SIGTERM arrives.
    server.site.write_config(&config("600s").render());
    assert_eq!(server.reload().status, 200, "drain_delay reloads");

    server.signal("TERM");
    server
        .stderr
        .wait_for(0, "Draining", WAIT)
        .expect("the drain's first line");
    let ready = server.get_on_new_connection("/readyz");
    assert_eq!(ready.status, 503, "not ready during the delay: {ready:?}");
    let root = server.get_on_new_connection("/");
    assert_eq!(root.status, 200, "still served during the delay: {root:?}");
    assert!(
        server.try_wait_exit(Duration::ZERO).is_none(),
        "kiln exited during the drain delay"
    );
}

#[test]
fn sigint_exits_zero_with_idle_connection_open() {
    let mut server = Server::start(&Config::sqlite().render());
    // Leaves an idle kept-alive connection in the server's agent.
    assert_eq!(server.get("/").status, 200);
    server.signal("INT");
    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(0), "kiln exits 0 on SIGINT ({exit})");
}

#[test]
fn a_reload_in_flight_when_the_drain_begins_is_refused_and_the_drain_exits_zero() {
    let pg = util::postgres();
    // New connections through the proxy are held: the reload that builds
    // a pool on it is still warming when SIGTERM arrives.
    let proxy = PgProxy::start(Duration::from_secs(3));
    let mut server = Server::start(&Config::postgres(&pg.url()).render());
    server
        .site
        .write_config(&Config::postgres(&pg.url_at(&proxy.addr().to_string())).render());
    let reload = {
        let url = server.admin_url("/admin/reload");
        thread::spawn(move || {
            util::call(&util::agent(), "POST", &url, &[], Some(""))
                .map(|reply| (reply.status, reply.body))
                .map_err(|e| e.to_string())
        })
    };
    util::wait_until(WAIT, "the reload to reach the database", || {
        proxy.accepted() > 0
    });

    server.signal("TERM");
    let (status, body) = reload
        .join()
        .expect("the client thread")
        .expect("the reload answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(0), "kiln exits 0 after draining ({exit})");
    assert!(
        !server.stderr.wait_closed().contains("Reloaded"),
        "the reload was published during the drain"
    );
}
