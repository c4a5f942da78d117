//! The command line: `--help`, `kiln validate`, `kiln reload`, and
//! environment overrides.

use serde_json::{Value, json};

use crate::util::{self, Config, Server, Site};

/// Parses the JSON answer `kiln reload` prints on stdout.
fn printed_json(out: &util::Output) -> Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"))
}

#[test]
fn help_works_for_each_command() {
    let top = util::run(util::kiln_command().arg("--help"));
    assert!(top.status.success(), "{top:?}");
    for word in ["validate", "reload"] {
        assert!(top.stdout.contains(word), "--help mentions {word}: {top:?}");
    }
    let validate = util::run(util::kiln_command().args(["validate", "--help"]));
    assert!(validate.status.success(), "{validate:?}");
    let reload = util::run(util::kiln_command().args(["reload", "--help"]));
    assert!(reload.status.success(), "{reload:?}");
    for flag in ["--admin", "--token"] {
        assert!(
            reload.stdout.contains(flag),
            "reload --help mentions {flag}: {reload:?}"
        );
    }
}

/// `kiln validate` on a good config exits 0 with a summary naming the pool.
fn assert_validates(config: Config) {
    let site = Site::new(&config.render());
    let out = util::run(site.command().arg("validate").arg(site.config_path()));
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("main"),
        "summary names pool main: {out:?}"
    );
}

#[test]
fn validate_accepts_good_sqlite_config() {
    assert_validates(Config::sqlite());
}

#[test]
fn validate_warms_postgres_pool() {
    let pg = util::postgres();
    assert_validates(Config::postgres(&pg.url()));
}

#[test]
fn validate_rejects_bad_value_naming_key() {
    let site = Site::new(&Config::sqlite().set("pools.main.max_size", "0").render());
    let out = util::run(site.command().arg("validate").arg(site.config_path()));
    assert!(!out.status.success(), "{out:?}");
    util::assert_error_line(&out.stderr, &["kiln.toml", "pools.main.max_size"]);
}

#[test]
fn validate_fails_on_unreachable_database() {
    let refusing = util::ClosedPort::new();
    let closed = refusing.addr();
    let config = Config::postgres(&format!("postgres://postgres@{closed}/test"))
        .set_str("server.warm_timeout", "5s");
    let site = Site::new(&config.render());
    let out = util::run(site.command().arg("validate").arg(site.config_path()));
    assert!(
        !out.status.success(),
        "validate must warm the pool: {out:?}"
    );
    util::assert_error_line(&out.stderr, &["main"]);
}

#[test]
fn reload_command_prints_answer_and_fails_on_bad_config() {
    let server = Server::start(&Config::sqlite().greeting("cli one").render());
    let admin = format!("http://{}", server.admin_addr());

    server
        .site
        .write_config(&Config::sqlite().greeting("cli two").render());
    let out = util::run(util::kiln_command().args(["reload", "--admin", &admin]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(printed_json(&out)["generation"], json!(2), "{out:?}");
    assert_eq!(server.get("/").body, "cli two");

    server
        .site
        .write_config(&Config::sqlite().set("pools.main.max_size", "0").render());
    let out = util::run(util::kiln_command().args(["reload", "--admin", &admin]));
    assert!(
        !out.status.success(),
        "a failed reload exits non-zero: {out:?}"
    );
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("pools.main.max_size"),
        "the failure names the key: {out:?}"
    );
    assert_eq!(server.get("/").body, "cli two");
}

#[test]
fn reload_command_sends_token_from_flag_or_env() {
    let token = "tok-77aa-cli-secret";
    let server = Server::start_with(&Config::sqlite().render(), &[("KILN__ADMIN__TOKEN", token)]);
    let admin = format!("http://{}", server.admin_addr());

    let out = util::run(util::kiln_command().args(["reload", "--admin", &admin]));
    assert!(
        !out.status.success(),
        "401 without a token exits non-zero: {out:?}"
    );
    let out = util::run(util::kiln_command().args(["reload", "--admin", &admin, "--token", token]));
    assert!(out.status.success(), "--token: {out:?}");
    let out = util::run(
        util::kiln_command()
            .args(["reload", "--admin", &admin])
            .env("KILN__ADMIN__TOKEN", token),
    );
    assert!(out.status.success(), "KILN__ADMIN__TOKEN: {out:?}");
    assert!(
        !out.stdout.contains(token) && !out.stderr.contains(token),
        "{out:?}"
    );
}

#[test]
fn reload_command_fails_without_server() {
    let refusing = util::ClosedPort::new();
    let closed = refusing.addr();
    let out =
        util::run(util::kiln_command().args(["reload", "--admin", &format!("http://{closed}")]));
    assert!(!out.status.success(), "{out:?}");
    // Not a usage error: the command ran and says what it could not reach.
    util::assert_error_line(
        &out.stderr,
        &["cannot reach the admin API", &closed.to_string()],
    );
}

#[test]
fn env_override_beats_the_file() {
    let config = Config::sqlite().greeting("from file").render();
    let server = Server::start_with(&config, &[("KILN__APP__GREETING", "from env")]);
    assert_eq!(server.get("/").body, "from env");
    // A reload reads the file again with the same overrides.
    server
        .site
        .write_config(&Config::sqlite().greeting("file changed").render());
    assert_eq!(server.reload().status, 200);
    assert_eq!(server.get("/").body, "from env");
}

#[test]
fn reload_command_reaches_an_ipv6_admin_address() {
    let server = Server::start(&Config::sqlite().set_str("admin.listen", "[::1]:0").render());
    let admin = server.admin_addr();
    assert!(admin.is_ipv6(), "{admin}");
    let out =
        util::run(util::kiln_command().args(["reload", "--admin", &format!("http://{admin}")]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("\"generation\": 2"), "{out:?}");
}

#[test]
fn reload_command_gives_up_on_a_silent_admin_after_its_timeout() {
    // Accepts connections (the kernel does, into the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().unwrap();
    let out = util::run(util::kiln_command().args([
        "reload",
        "--admin",
        &format!("http://{addr}"),
        "--timeout",
        "1s",
    ]));
    assert!(!out.status.success(), "{out:?}");
    util::assert_error_line(&out.stderr, &["no answer from the admin API", "within 1s"]);
}
