//! Admin auth and secrets: the browser guard (Origin, Sec-Fetch-Site, Host)
//! before anything; with a token every admin route needs the exact bearer
//! token, failures share one budget; embedded without a token, changes are
//! refused; every change is audited; secrets never show in answers or logs.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use kiln::Kiln;
use serde_json::{Value, json};

use crate::util::{self, Config, GreetingApp, Reply, Server, Site, send};

const ROUTES: [(&str, &str); 4] = [
    ("GET", "/admin/status"),
    ("GET", "/admin/history"),
    ("GET", "/admin/config"),
    ("POST", "/admin/reload"),
];

#[test]
fn env_token_guards_every_admin_route() {
    let token = "tok-5b1e-env-secret";
    let server = Server::start_with(&Config::sqlite().render(), &[("KILN__ADMIN__TOKEN", token)]);
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {token}x")),
        Some(format!("Bearer {}", &token[..token.len() - 1])),
        Some(token.to_owned()),
        Some(format!("Basic {token}")),
    ];
    for (method, path) in ROUTES {
        for auth in &wrong {
            let reply = server.admin_call(method, path, auth.as_deref());
            // 429 once the failures have spent their budget: refused too.
            assert!(
                [401, 429].contains(&reply.status),
                "{method} {path} with {auth:?}: {reply:?}"
            );
            assert!(!reply.body.contains(token), "{reply:?}");
        }
        let mut reply = None;
        util::wait_until(Duration::from_secs(30), "the token to be accepted", || {
            let answer = server.admin_call(method, path, Some(&format!("Bearer {token}")));
            let accepted = answer.status != 429;
            reply = Some(answer);
            accepted
        });
        let reply = reply.expect("called at least once");
        assert_eq!(
            reply.status, 200,
            "{method} {path} with the token: {reply:?}"
        );
        assert!(
            !reply.body.contains(token),
            "token in the answer: {reply:?}"
        );
    }

    let config = server.admin_get("/admin/config").json();
    assert_eq!(config["admin"]["token"], json!("***"), "{config}");
    assert_eq!(
        server.get("/").status,
        200,
        "the main listener needs no token"
    );
    server.assert_not_printed(token);
}

#[test]
fn file_token_allows_public_admin_and_stays_secret() {
    let token = "tok-93c2-file-secret";
    let config = Config::sqlite()
        .set_str("admin.listen", "0.0.0.0:0")
        .set_str("admin.token", token);
    let server = Server::start(&config.render());
    let denied = server.admin_call("GET", "/admin/status", None);
    assert_eq!(denied.status, 401, "{denied:?}");
    let reply = server.admin_call("GET", "/admin/config", Some(&format!("Bearer {token}")));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["admin"]["token"], json!("***"), "{reply:?}");
    assert!(!reply.body.contains(token), "{reply:?}");
    server.assert_not_printed(token);
}

#[test]
fn database_password_is_never_shown() {
    let password = "pw-4d7f-hunter2";
    let pg = util::postgres();
    let server = Server::start(&Config::postgres(&pg.url_with_password(password)).render());
    for path in ["/admin/config", "/admin/status"] {
        let reply = server.admin_get(path);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            !reply.body.contains(password),
            "password in {path}: {reply:?}"
        );
    }
    // A reload that rebuilds the pool logs about it: still no password.
    server.site.write_config(
        &Config::postgres(&pg.url_with_password(password))
            .set("pools.main.max_size", "5")
            .render(),
    );
    let reply = server.reload();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(!reply.body.contains(password), "{reply:?}");
    server.assert_not_printed(password);
}

/// The error of a refused admin call: the JSON shape every admin error has.
fn assert_forbidden(reply: &Reply, generation: u64, naming: &str) {
    assert_eq!(reply.status, 403, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["generation"], json!(generation), "{reply:?}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(naming),
        "error should name {naming}: {reply:?}"
    );
}

#[test]
fn cross_site_requests_and_foreign_hosts_are_refused_before_anything_runs() {
    let server = Server::start(&Config::sqlite().greeting("one").render());
    server
        .site
        .write_config(&Config::sqlite().greeting("two").render());
    assert_eq!(server.reload().status, 200);
    let port = server.admin_addr().port();
    let foreign_port = format!("Host: evil.example:{port}");
    let refused: [(&str, &str, &[&str], &str); 6] = [
        // A web page's "simple" cross-origin POST.
        (
            "POST",
            "/admin/rollback",
            &["Origin: http://evil.example"],
            "Origin",
        ),
        ("POST", "/admin/reload", &["Origin: null"], "Origin"),
        // A browser that says the request crosses sites.
        (
            "POST",
            "/admin/rollback",
            &["Sec-Fetch-Site: cross-site"],
            "Sec-Fetch-Site",
        ),
        (
            "POST",
            "/admin/reload",
            &["Sec-Fetch-Site: same-site"],
            "Sec-Fetch-Site",
        ),
        // DNS rebinding: the page's own name, resolved to 127.0.0.1.
        ("POST", "/admin/rollback", &["Host: evil.example"], "Host"),
        ("GET", "/admin/config", &[&foreign_port], "Host"),
    ];
    for (method, path, headers, naming) in refused {
        let reply = server.admin_curl(method, path, headers);
        assert_forbidden(&reply, 2, naming);
    }
    assert_eq!(server.status_generation(), 2, "nothing was rolled back");
    assert!(server.history_of("rollback").is_empty());

    // The operator's own tools: no Origin, the listener's address or localhost.
    let localhost = format!("Host: localhost:{port}");
    let accepted: [&[&str]; 5] = [
        &[],
        &[&localhost],
        &["Host: 127.0.0.1"],
        &["Sec-Fetch-Site: same-origin"],
        &["Sec-Fetch-Site: none"],
    ];
    for headers in accepted {
        let reply = server.admin_curl("GET", "/admin/status", headers);
        assert_eq!(reply.status, 200, "{headers:?}: {reply:?}");
    }
    let reply = server.admin_curl("POST", "/admin/reload", &[]);
    assert_eq!(
        reply.status, 200,
        "plain curl -X POST still reloads: {reply:?}"
    );
}

#[test]
fn allowed_origins_and_hosts_let_a_named_dashboard_through() {
    let config = Config::sqlite()
        .set("admin.allowed_origins", r#"["https://ops.example"]"#)
        .set("admin.allowed_hosts", r#"["kiln-admin.internal"]"#);
    let server = Server::start(&config.render());
    for headers in [
        &["Origin: https://ops.example", "Sec-Fetch-Site: cross-site"][..],
        &["Host: kiln-admin.internal"],
        &["Host: KILN-admin.internal:8443"],
    ] {
        let reply = server.admin_curl("POST", "/admin/reload", headers);
        assert_eq!(reply.status, 200, "{headers:?}: {reply:?}");
    }
    for (headers, naming) in [
        (&["Origin: https://ops.example.evil"][..], "Origin"),
        (&["Origin: http://ops.example"], "Origin"),
        (&["Host: kiln-admin.internal.evil"], "Host"),
    ] {
        let reply = server.admin_curl("POST", "/admin/reload", headers);
        assert_forbidden(&reply, 4, naming);
    }
}

#[test]
fn the_guard_answers_before_the_token_is_checked() {
    let token = "tok-0c41-guard";
    let server = Server::start_with(&Config::sqlite().render(), &[("KILN__ADMIN__TOKEN", token)]);
    let bearer = format!("Authorization: Bearer {token}");
    for headers in [
        &["Origin: http://evil.example"][..],
        &["Origin: http://evil.example", &bearer],
    ] {
        let reply = server.admin_curl("POST", "/admin/reload", headers);
        assert_forbidden(&reply, 1, "Origin");
    }
    let reply = server.admin_curl("POST", "/admin/reload", &[&bearer]);
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let token = "tok-77aa-scheme";
    let server = Server::start_with(&Config::sqlite().render(), &[("KILN__ADMIN__TOKEN", token)]);
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let reply = server.admin_call("GET", "/admin/status", Some(&format!("{scheme} {token}")));
        assert_eq!(reply.status, 200, "{scheme}: {reply:?}");
    }
}

#[test]
fn failed_authentications_share_one_budget_then_get_429() {
    let token = "tok-3f9e-budget";
    let server = Server::start_with(&Config::sqlite().render(), &[("KILN__ADMIN__TOKEN", token)]);
    // Until the first 429: the budget gives one failure back every 100 ms,
    // so on a loaded machine a fixed number of guesses may never exhaust it.
    let mut replies: Vec<Reply> = Vec::new();
    util::wait_until(
        Duration::from_secs(30),
        "a wrong token answered 429",
        || {
            let guess = format!("Bearer guess-{}", replies.len());
            replies.push(server.admin_call("POST", "/admin/reload", Some(&guess)));
            replies.last().is_some_and(|reply| reply.status == 429)
        },
    );
    assert_eq!(replies[0].status, 401, "{:?}", replies[0]);
    let limited = replies.last().expect("a 429");
    let retry_after: u64 = limited
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After in seconds: {limited:?}"));
    assert!(retry_after >= 1, "{limited:?}");
    assert_eq!(limited.json()["generation"], json!(1), "{limited:?}");
    assert!(
        replies
            .iter()
            .all(|reply| [401, 429].contains(&reply.status)),
        "only 401s and 429s"
    );
    // The budget refills: the right token gets through again.
    let bearer = format!("Bearer {token}");
    util::wait_until(Duration::from_secs(30), "the budget to refill", || {
        server
            .admin_call("GET", "/admin/status", Some(&bearer))
            .status
            == 200
    });
    assert_eq!(server.history().len(), 0, "no guess reloaded anything");
}

#[test]
fn every_mutation_is_audited_with_its_peer() {
    let server = Server::start(&Config::sqlite().greeting("one").render());
    server
        .site
        .write_config(&Config::sqlite().greeting("two").render());
    assert_eq!(server.reload().status, 200);
    assert_eq!(
        server
            .patch_config(&json!({"app": {"greeting": "three"}}))
            .status,
        200
    );
    assert_eq!(server.rollback().status, 200);
    server.site.write_config("not toml [");
    assert_eq!(server.reload().status, 422);
    server.signal("HUP");
    let history = {
        let mut history = Vec::new();
        util::wait_until(
            Duration::from_secs(30),
            "the SIGHUP reload in history",
            || {
                history = server.history();
                history.len() == 5
            },
        );
        history
    };
    // Newest first: signal, refused reload, rollback, patch, reload.
    for (entry, trigger) in
        history
            .iter()
            .zip(["signal", "http-reload", "rollback", "patch", "http-reload"])
    {
        assert_eq!(entry["trigger"], trigger, "{entry}");
        if trigger == "signal" {
            assert_eq!(entry["peer"], Value::Null, "{entry}");
        } else {
            let peer = entry["peer"].as_str().unwrap_or_default();
            assert!(peer.starts_with("127.0.0.1:"), "{entry}");
        }
    }
    // Answered and in the history does not mean read from the pipe yet.
    let wait = Duration::from_secs(30);
    for needle in [
        "trigger=patch peer=127.0.0.1:",
        "trigger=rollback peer=127.0.0.1:",
        "trigger=http-reload peer=127.0.0.1:",
    ] {
        if server.stderr.wait_for(0, needle, wait).is_none() {
            panic!("no audit line with {needle}: {}", server.stderr.text());
        }
    }
    util::wait_until(
        wait,
        "the patch's log line naming the keys it changed",
        || {
            server
                .stderr
                .snapshot()
                .iter()
                .any(|line| line.contains("trigger=patch") && line.contains("app.greeting"))
        },
    );
}

/// `method path` for an in-process router, with a JSON body for changes.
fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = if method == "GET" { "" } else { "{}" };
    request
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("a valid request")
}

async fn start_embedded(config: &Config) -> (Site, Kiln<GreetingApp>) {
    let site = Site::new(&config.render());
    let loaded = kiln::load_config(&site.config_path()).expect("a valid config");
    let kiln = Kiln::start(GreetingApp, loaded).await.expect("kiln starts");
    (site, kiln)
}

#[tokio::test]
async fn embedded_admin_refuses_changes_without_a_token_unless_opted_out() {
    let (site, kiln) = start_embedded(&Config::sqlite().greeting("one")).await;
    let admin = kiln.admin_router();
    for (method, path) in [
        ("POST", "/reload"),
        ("POST", "/rollback"),
        ("PATCH", "/config"),
    ] {
        let reply = send(&admin, request(method, path, &[])).await;
        assert_forbidden(&reply, 1, "admin.token");
        assert!(
            reply.body.contains("admin_router_unauthenticated"),
            "{reply:?}"
        );
    }
    for path in ["/status", "/config", "/history"] {
        let reply = send(&admin, request("GET", path, &[])).await;
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
    }
    assert!(kiln.history().is_empty(), "nothing was attempted");

    // Opted out in code: changes are served, the browser guard still holds,
    // and the embedder's host names are not second-guessed.
    let open = kiln.admin_router_unauthenticated();
    let reply = send(
        &open,
        request("POST", "/reload", &[("origin", "http://evil.example")]),
    )
    .await;
    assert_forbidden(&reply, 1, "Origin");
    site.write_config(&Config::sqlite().greeting("two").render());
    let reply = send(
        &open,
        request("POST", "/reload", &[("host", "app.example")]),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(kiln.current().id(), 2);
    assert_eq!(kiln.history()[0].peer, None, "no client address in-process");
}

#[tokio::test]
async fn embedded_admin_with_a_token_serves_its_holder_and_named_hosts() {
    let token = "tok-e3d2-embedded";
    let config = Config::sqlite()
        .set_str("admin.token", token)
        .set("admin.allowed_hosts", r#"["app.example"]"#);
    let (_site, kiln) = start_embedded(&config).await;
    let admin = kiln.admin_router();
    let bearer = format!("Bearer {token}");
    let reply = send(&admin, request("POST", "/reload", &[])).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let reply = send(
        &admin,
        request("POST", "/reload", &[("authorization", &bearer)]),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    for (host, status) in [
        ("app.example", 200),
        ("localhost:3000", 200),
        ("other.example", 403),
    ] {
        let headers = [("authorization", bearer.as_str()), ("host", host)];
        let reply = send(&admin, request("GET", "/status", &headers)).await;
        assert_eq!(reply.status, status, "Host {host}: {reply:?}");
    }
}
