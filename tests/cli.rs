//! The command line: `--help`, `kiln validate`, the commands that drive a
//! running server through its admin API (`reload`, `status`, `history`,
//! `config`, `log-level`), and environment overrides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{self, Config, Server, Site};

/// Parses the JSON answer an admin command prints on stdout with `--json`.
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
    for command in ADMIN_COMMANDS {
        assert!(
            top.stdout.contains(command),
            "--help lists {command}: {top:?}"
        );
        let help = util::run(util::kiln_command().args([command, "--help"]));
        assert!(help.status.success(), "{help:?}");
        for word in [
            "--admin",
            "--token",
            "KILN__ADMIN__TOKEN",
            "--timeout",
            "--json",
            "Exit status",
        ] {
            assert!(
                help.stdout.contains(word),
                "{command} --help mentions {word}: {help:?}"
            );
        }
    }
}

/// The commands that talk to a running server's admin API.
const ADMIN_COMMANDS: [&str; 6] = [
    "reload",
    "restart",
    "status",
    "history",
    "config",
    "log-level",
];

/// `kiln ARGS --admin URL` (the token, if any, from the environment).
fn admin_command(server: &Server, args: &[&str]) -> util::Output {
    let admin = format!("http://{}", server.admin_addr());
    util::run(util::kiln_command().args(args).args(["--admin", &admin]))
}

#[test]
fn status_history_config_and_log_level_commands_read_a_running_server() {
    let token = "tok-5e1f-cli-secret";
    let server = Server::start_with(
        &Config::sqlite().greeting("one").render(),
        &[("KILN__ADMIN__TOKEN", token)],
    );
    let admin = format!("http://{}", server.admin_addr());
    let kiln = |args: &[&str]| {
        util::run(
            util::kiln_command()
                .args(args)
                .args(["--admin", &admin])
                .env("KILN__ADMIN__TOKEN", token),
        )
    };
    server
        .site
        .write_config(&Config::sqlite().greeting("two").render());
    let out = kiln(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("generation 2") && out.stdout.contains("app.greeting"),
        "a human summary of the reload: {out:?}"
    );

    let shows = |command: &str, fields: &[&str]| {
        let out = kiln(&[command]);
        assert!(out.status.success(), "{out:?}");
        for field in fields {
            assert!(
                out.stdout.contains(field),
                "{command} shows {field}: {out:?}"
            );
        }
        assert!(!out.stdout.contains(token), "{out:?}");
        printed_json(&kiln(&[command, "--json"]))
    };
    let status = shows(
        "status",
        &[
            "generation",
            "2",
            "kiln.toml",
            "main",
            "sqlite",
            "AVAILABLE",
        ],
    );
    assert_eq!(status["generation"], 2, "{status}");
    let history = shows(
        "history",
        &[
            "GENERATION",
            "TRIGGER",
            "http-reload",
            "app.greeting",
            "127.0.0.1:",
        ],
    );
    assert_eq!(history[0]["generation"], 2, "{history}");
    let config = shows(
        "config",
        &[
            "app.greeting",
            "two",
            "pools.main.max_size",
            "admin.token",
            "***",
        ],
    );
    assert_eq!(config["app"]["greeting"], "two", "{config}");
    assert_eq!(config["admin"]["token"], "***", "{config}");

    let level = shows("log-level", &["filter", "info", "source", "config"]);
    assert_eq!(level["source"], "config", "{level}");
    let out = kiln(&["log-level", "info,kiln::notes=debug"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("kiln::notes=debug"), "{out:?}");
    let level = printed_json(&kiln(&["log-level", "--json"]));
    assert_eq!(
        level["filter"], "info,kiln::notes=debug,kiln::access=info",
        "{level}"
    );
    assert_eq!(level["source"], "admin", "{level}");

    let out = kiln(&["log-level", "info,kiln=loud"]);
    assert!(!out.status.success(), "{out:?}");
    util::assert_error_line(&out.stderr, &["kiln=loud", "unchanged"]);
    let level = printed_json(&kiln(&["log-level", "--json"]));
    assert_eq!(
        level["filter"], "info,kiln::notes=debug,kiln::access=info",
        "{level}"
    );
    server.assert_not_printed(token);
}

#[test]
fn admin_commands_say_what_to_do_when_the_token_is_wrong() {
    let token = "tok-0d3a-cli-secret";
    let server = Server::start_with(&Config::sqlite().render(), &[("KILN__ADMIN__TOKEN", token)]);
    // Missing for each command, wrong for one: within the failure budget
    // (10 at once), so that each is answered 401, not 429.
    let wrong = ["--token", "wrong"];
    let tries = ADMIN_COMMANDS
        .iter()
        .map(|command| [*command].to_vec())
        .chain([["status"].iter().chain(&wrong).copied().collect()]);
    for args in tries {
        let out = admin_command(&server, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let hint = if args.len() == 1 {
            ["needs a token", "--token", "KILN__ADMIN__TOKEN"]
        } else {
            ["refused the token", "--token", "KILN__ADMIN__TOKEN"]
        };
        util::assert_error_line(&out.stderr, &hint);
    }
    // Past the budget, the answer says to wait and check the token. The
    // budget gives one failure back every 100 ms, less than a kiln process
    // may take to start on a loaded machine: a thread keeps it spent while
    // the command runs, and a command whose request landed on a refilled
    // slot (and succeeded) runs again.
    let spent = BudgetSpender::start(&server);
    util::wait_until(
        Duration::from_secs(30),
        "the command to be refused for too many failures",
        || {
            spent.wait_exhausted();
            let out = admin_command(&server, &["status", "--token", token]);
            if out.status.success() {
                return false;
            }
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            util::assert_error_line(&out.stderr, &["too many failed", "--token"]);
            true
        },
    );
    drop(spent);
    util::wait_until(Duration::from_secs(30), "the budget to refill", || {
        admin_command(&server, &["status", "--token", token])
            .status
            .success()
    });
    assert_eq!(server.history().len(), 0, "nothing was applied");
}

/// A thread that sends wrong tokens to the admin API until dropped, so that
/// the failure budget stays spent.
struct BudgetSpender {
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BudgetSpender {
    fn start(server: &Server) -> BudgetSpender {
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicBool::new(false));
        let url = server.admin_url("/admin/status");
        let thread = thread::spawn({
            let (stop, refused) = (stop.clone(), refused.clone());
            move || {
                let agent = util::agent();
                let wrong = [("authorization", "Bearer wrong")];
                while !stop.load(SeqCst) {
                    let reply = util::call(&agent, "GET", &url, &wrong, None)
                        .expect("the admin API answers");
                    assert!(matches!(reply.status, 401 | 429), "{reply:?}");
                    if reply.status == 429 {
                        refused.store(true, SeqCst);
                    }
                }
            }
        });
        BudgetSpender {
            stop,
            refused,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until a wrong token has been answered 429.
    fn wait_exhausted(&self) {
        util::wait_until(
            Duration::from_secs(30),
            "a wrong token to be answered 429",
            || self.refused.load(SeqCst),
        );
    }
}

impl Drop for BudgetSpender {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let thread = self.thread.take().expect("joined once");
        // A panic in the thread fails the test, unless it is failing already.
        if thread.join().is_err() && !thread::panicking() {
            panic!("the thread spending the failure budget panicked");
        }
    }
}

#[test]
fn admin_commands_say_so_when_no_server_answers() {
    let refusing = util::ClosedPort::new();
    let closed = refusing.addr();
    for command in ADMIN_COMMANDS {
        let out =
            util::run(util::kiln_command().args([command, "--admin", &format!("http://{closed}")]));
        assert_eq!(out.status.code(), Some(3), "{command}: {out:?}");
        util::assert_error_line(
            &out.stderr,
            &[
                "cannot reach the admin API",
                &closed.to_string(),
                "is kiln running",
            ],
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
    let out = util::run(util::kiln_command().args(["reload", "--json", "--admin", &admin]));
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
    let out = util::run(util::kiln_command().args([
        "reload",
        "--admin",
        &format!("[{}]:{}", admin.ip(), admin.port()),
    ]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("generation 2"), "{out:?}");
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
