//! Each example in `examples/`, run as the compiled program with a config
//! file of the test's own (ephemeral ports, data in a temp folder).

use serde_json::Value;

use crate::util::{
    Config, READY_TIMEOUT, Reply, Server, Site, agent, call, free_addr, json_strings,
};

/// The example's own config file, with ephemeral listen addresses.
fn example_config(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/");
    let text =
        std::fs::read_to_string(format!("{path}{name}.toml")).expect("read the example's config");
    text.replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
}

/// A request to the example's main listener, with `Host: host` when given.
fn request(server: &Server, method: &str, path: &str, host: Option<&str>) -> Reply {
    let headers: Vec<_> = host.map(|host| ("host", host)).into_iter().collect();
    let body = (method == "POST").then_some("");
    call(&agent(), method, &server.url(path), &headers, body).expect("the example answers")
}

/// The body of a request answered 2xx.
fn ok(server: &Server, method: &str, path: &str, host: Option<&str>) -> String {
    let reply = request(server, method, path, host);
    assert!(
        (200..300).contains(&reply.status),
        "{method} {path}: {reply:?}"
    );
    reply.body
}

/// Replaces `from` by `to` in the example's config file.
fn edit(server: &Server, from: &str, to: &str) {
    let text = server.site.read_config();
    assert!(text.contains(from), "{from:?} not in the config");
    server.site.write_config(&text.replace(from, to));
}

/// Edits the config, reloads through the admin API and returns what the
/// reload rebuilt.
fn edit_and_reload(server: &Server, from: &str, to: &str) -> Vec<String> {
    edit(server, from, to);
    let reply = server.reload();
    assert_eq!(reply.status, 200, "{reply:?}");
    let outcome: Value = reply.json();
    json_strings(&outcome["rebuilt"])
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn embed_serves_its_own_routes_kiln_at_api_and_admin_at_ops() {
    let site = Site::new(&Config::sqlite().greeting("Hello, embedded").render());
    let listen = free_addr().to_string();
    let token = "tok-41b7-embed";
    let server =
        Server::start_example_with("embed", site, &[&listen], &[("KILN__ADMIN__TOKEN", token)]);
    let own = ok(&server, "GET", "/", None);
    assert!(
        own.contains("host app's own route") && own.contains("generation 1"),
        "{own}"
    );
    let api = server.get("/api");
    assert_eq!(
        (api.status, api.body.as_str()),
        (200, "Hello, embedded"),
        "{api:?}"
    );
    assert_eq!(api.generation(), 1);
    assert!(ok(&server, "GET", "/api/sqlite", None).starts_with('3'));

    // Reloaded through the admin API nested at /ops, with the token...
    edit(&server, "Hello", "Howdy");
    let denied = request(&server, "POST", "/ops/reload", None);
    assert_eq!(denied.status, 401, "{denied:?}");
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let outcome = call(
        &agent(),
        "POST",
        &server.url("/ops/reload"),
        &headers,
        Some(""),
    )
    .expect("the example answers");
    assert_eq!(outcome.status, 200, "{outcome:?}");
    assert!(outcome.body.contains("\"generation\":2"), "{outcome:?}");
    let api = server.get("/api");
    assert_eq!(
        (api.body.as_str(), api.generation()),
        ("Howdy, embedded", 2)
    );
    let status = call(&agent(), "GET", &server.url("/ops/status"), &headers, None)
        .expect("the example answers");
    assert!(status.body.contains("\"generation\":2"), "{status:?}");
    let history = call(&agent(), "GET", &server.url("/ops/history"), &headers, None)
        .expect("the example answers")
        .json();
    let peer = history[0]["peer"].as_str().unwrap_or_default();
    assert!(
        peer.starts_with("127.0.0.1:"),
        "the client's address is recorded: {history}"
    );
    // ...and from the app's own code.
    let hook = ok(&server, "POST", "/deploy-hook", None);
    assert!(hook.contains("\"generation\":3"), "{hook}");
    // The app's subscriber saw every generation.
    let seen = "kiln published a new generation generation=3";
    assert!(
        server.stderr.wait_for(0, seen, READY_TIMEOUT).is_some(),
        "{}",
        server.stderr.text()
    );
}

#[test]
fn embed_without_a_token_refuses_admin_changes_and_says_why() {
    let site = Site::new(&Config::sqlite().greeting("Hello, embedded").render());
    let listen = free_addr().to_string();
    let server = Server::start_example("embed", site, &[&listen]);
    let warning = "Embedded admin API without admin.token";
    assert!(
        server.stderr.text().contains(warning),
        "{}",
        server.stderr.text()
    );
    let reply = request(&server, "POST", "/ops/reload", None);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("admin.token"),
        "{reply:?}"
    );
    assert_eq!(server.get("/api").generation(), 1, "nothing was reloaded");
}

#[test]
fn custom_resource_warms_at_start_and_rebuilds_only_when_its_section_changes() {
    let config = example_config("custom_resource").replace("2_000_000", "100_000");
    let server = Server::start_example("custom_resource", Site::new(&config), &[]);
    let warm = server
        .stderr
        .wait_for(0, "Resource warm", READY_TIMEOUT)
        .expect("a `Resource warm` line before ready");
    assert!(
        warm.contains("resource=primes") && warm.contains("took_ms="),
        "{warm}"
    );
    let table = "9592 primes up to 100000 (table #1)\n";
    assert_eq!(server.get("/").body, format!("Primes: {table}"));
    assert_eq!(server.get("/primes/7919").body, "7919 is prime\n");

    let rebuilt = edit_and_reload(&server, "\"Primes\"", "\"Prime numbers\"");
    assert!(rebuilt.is_empty(), "{rebuilt:?}");
    assert_eq!(server.get("/").body, format!("Prime numbers: {table}"));

    let rebuilt = edit_and_reload(&server, "100_000", "200_000");
    assert_eq!(rebuilt, ["primes"]);
    let table = "17984 primes up to 200000 (table #2)\n";
    assert_eq!(server.get("/").body, format!("Prime numbers: {table}"));
}

#[test]
fn tenants_serve_per_host_and_a_reload_rebuilds_only_the_changed_tenant() {
    let server = Server::start_example("tenants", Site::new(&example_config("tenants")), &[]);
    let (alpha, beta) = (Some("alpha.localhost"), Some("beta.localhost"));
    assert_eq!(ok(&server, "GET", "/", alpha), "Hello from Alpha\n");
    assert_eq!(ok(&server, "GET", "/", beta), "Bonjour de Beta\n");
    // Each tenant counts visits in its own database.
    ok(&server, "POST", "/visits", alpha);
    let visit = |host| ok(&server, "POST", "/visits", host);
    assert_eq!(visit(alpha), "visit 2 to alpha.localhost\n");
    assert_eq!(visit(beta), "visit 1 to beta.localhost\n");
    let unknown = request(&server, "GET", "/", Some("gamma.localhost"));
    assert_eq!(unknown.status, 404, "{unknown:?}");

    let rebuilt = edit_and_reload(&server, "Bonjour de Beta", "Salut de Beta");
    assert_eq!(rebuilt, ["tenant:beta.localhost"]);
    assert_eq!(ok(&server, "GET", "/", beta), "Salut de Beta\n");
    assert_eq!(ok(&server, "GET", "/", alpha), "Hello from Alpha\n");
    assert_eq!(visit(alpha), "visit 3 to alpha.localhost\n");
}
