//! Start-up failures: a bad config or an unready resource makes kiln exit
//! non-zero with one `error:` line naming the cause, and nothing is ever bound.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::util::{self, Config, Server, Site};

/// Runs `kiln` on `config` expecting start-up to fail; asserts that none of
/// `watch` ever accepted a connection meanwhile and returns stderr.
fn refuses_to_start(config: &Config, watch: &[SocketAddr]) -> String {
    let mut server = Server::spawn(Site::new(&config.render()), &[]);
    let deadline = Instant::now() + util::EXIT_TIMEOUT;
    let status = loop {
        for addr in watch {
            assert!(
                !util::accepts(*addr),
                "{addr} accepted a connection during a failing start-up"
            );
        }
        if let Some(status) = server.try_wait_exit(Duration::from_millis(20)) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kiln still running {:?} into a start-up that must fail",
            util::EXIT_TIMEOUT
        );
    };
    assert!(
        !status.success(),
        "kiln exited with {status} on a start-up that must fail"
    );
    // The exit can overtake the reader thread: read up to the pipe's end.
    server.stderr.wait_closed()
}

/// A SQLite config on fixed ports, and those ports.
fn fixed_ports(config: Config) -> (Config, [SocketAddr; 2]) {
    let (main, admin) = util::free_addr_pair();
    (config.listen_on(main, admin), [main, admin])
}

#[test]
fn out_of_range_value_names_file_and_key() {
    let (config, ports) = fixed_ports(Config::sqlite().set("pools.main.max_size", "0"));
    let stderr = refuses_to_start(&config, &ports);
    util::assert_error_line(&stderr, &["kiln.toml", "pools.main.max_size"]);
}

#[test]
fn unknown_key_names_file_and_key() {
    let (config, ports) = fixed_ports(Config::sqlite().set("pools.main.max_sise", "4"));
    let stderr = refuses_to_start(&config, &ports);
    util::assert_error_line(&stderr, &["kiln.toml", "max_sise"]);
}

#[test]
fn wrong_type_names_file_and_key() {
    let (config, ports) = fixed_ports(Config::sqlite().set("server.workers", r#""two""#));
    let stderr = refuses_to_start(&config, &ports);
    util::assert_error_line(&stderr, &["kiln.toml", "server.workers"]);
}

#[test]
fn syntax_error_names_file() {
    let site = Site::new(&Config::sqlite().render().replace("[app]", "[app"));
    let out = util::run(site.command().arg(site.config_path()));
    assert!(!out.status.success(), "{out:?}");
    util::assert_error_line(&out.stderr, &["kiln.toml"]);
}

#[test]
fn missing_config_file_is_named() {
    let site = Site::new("");
    let out = util::run(site.command().arg(site.path("nowhere.toml")));
    assert!(!out.status.success(), "{out:?}");
    util::assert_error_line(&out.stderr, &["nowhere.toml"]);
}

#[test]
fn unreachable_database_fails_naming_pool_without_binding() {
    let refusing = util::ClosedPort::new();
    let closed = refusing.addr();
    let config = Config::postgres(&format!("postgres://postgres@{closed}/test"))
        .set_str("server.warm_timeout", "5s");
    let (config, ports) = fixed_ports(config);
    let stderr = refuses_to_start(&config, &ports);
    util::assert_error_line(&stderr, &["main"]);
}

#[test]
fn public_admin_without_token_refuses_to_start() {
    let (main, admin) = util::free_addr_pair();
    let config = Config::sqlite()
        .listen_on(main, admin)
        .set_str("admin.listen", &format!("0.0.0.0:{}", admin.port()));
    let stderr = refuses_to_start(&config, &[main, admin]);
    util::assert_error_line(&stderr, &["admin.token"]);
}

#[test]
fn a_database_error_at_start_up_shows_the_servers_message() {
    let pg = util::postgres();
    // A role that may use the schema but not create in it: the demo's
    // `CREATE TABLE` is refused by the server.
    let schema = pg.name().to_owned();
    let role = format!("{schema}_nocreate");
    util::pg_admin(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {role}"
    ));
    let url = pg.url().replacen("postgres@", &format!("{role}@"), 1);
    let (config, ports) = fixed_ports(Config::postgres(&url));
    let stderr = refuses_to_start(&config, &ports);
    drop(pg);
    util::pg_admin(&format!("DROP ROLE IF EXISTS {role}"));
    util::assert_error_line(
        &stderr,
        &["app", &format!("permission denied for schema {schema}")],
    );
    // The chain is printed once: no cause repeats on the line.
    let line = stderr.lines().find(|l| l.contains("error:")).unwrap();
    assert_eq!(line.matches("permission denied").count(), 1, "{line}");
}
