//! Admin auth and secrets: with a token every admin route needs the exact
//! bearer token; secrets never show in answers or logs.

use serde_json::json;

use crate::util::{self, Config, Server};

const ROUTES: [(&str, &str); 3] = [
    ("GET", "/admin/status"),
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
            assert_eq!(
                reply.status, 401,
                "{method} {path} with {auth:?}: {reply:?}"
            );
            assert!(!reply.body.contains(token), "{reply:?}");
        }
        let reply = server.admin_call(method, path, Some(&format!("Bearer {token}")));
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
