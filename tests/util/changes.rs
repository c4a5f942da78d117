//! Web-alterable configuration: PATCH, rollback, history, watched files.

use std::time::Duration;

use serde_json::Value;

use super::*;

/// How long a change made through the file (a watched save, SIGHUP) may take
/// to be served: debounce, reload and warm-up in a debug build on a busy
/// machine.
pub(crate) const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

impl Site {
    /// The config file's text as it is on disk now.
    pub(crate) fn read_config(&self) -> String {
        std::fs::read_to_string(self.config_path()).expect("read the config file")
    }

    /// Overwrites the config file in place (truncate, then write), as a
    /// plain `echo > file` or an editor without safe-save does.
    pub(crate) fn write_config_in_place(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config in place");
    }
}

impl Server {
    /// `PATCH /admin/config` with `body` sent as-is, labelled JSON, plus
    /// `headers` (`If-Match`, `Authorization`); the start-up token is sent
    /// unless `headers` carries an `Authorization` of its own.
    pub(crate) fn patch_config_raw(&self, body: &str, headers: &[(&str, &str)]) -> Reply {
        self.admin_send("PATCH", "/admin/config", body, headers)
    }

    /// `method path` on the admin listener with `body` sent as-is, labelled
    /// JSON, plus `headers`; the start-up token is sent unless `headers`
    /// carries an `Authorization` of its own.
    pub(crate) fn admin_send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all = vec![("content-type", "application/json")];
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            all.extend(bearer.as_deref().map(|b| ("authorization", b)));
        }
        all.extend_from_slice(headers);
        expect_reply(call(
            &self.agent,
            method,
            &self.admin_url(path),
            &all,
            Some(body),
        ))
    }

    /// `PATCH /admin/config` with a JSON merge patch.
    pub(crate) fn patch_config(&self, patch: &Value) -> Reply {
        self.patch_config_raw(&patch.to_string(), &[])
    }

    /// `PATCH /admin/config` with a JSON merge patch and `If-Match: etag`.
    pub(crate) fn patch_config_if_match(&self, patch: &Value, etag: &str) -> Reply {
        self.patch_config_raw(&patch.to_string(), &[("if-match", etag)])
    }

    /// The `ETag` of `GET /admin/config`.
    pub(crate) fn config_etag(&self) -> String {
        let reply = self.admin_get("/admin/config");
        assert_eq!(reply.status, 200, "{reply:?}");
        reply
            .header("etag")
            .unwrap_or_else(|| panic!("GET /admin/config without an ETag: {reply:?}"))
            .to_owned()
    }

    /// `POST /admin/rollback`.
    pub(crate) fn rollback(&self) -> Reply {
        self.admin("POST", "/admin/rollback")
    }

    /// `GET /admin/history`: the reload attempts, newest first.
    pub(crate) fn history(&self) -> Vec<Value> {
        let reply = self.admin_get("/admin/history");
        assert_eq!(reply.status, 200, "{reply:?}");
        match reply.json() {
            Value::Array(entries) => entries,
            other => panic!("history is not a JSON array: {other}"),
        }
    }

    /// The history entries with `trigger`, newest first.
    pub(crate) fn history_of(&self, trigger: &str) -> Vec<Value> {
        self.history()
            .into_iter()
            .filter(|entry| entry["trigger"] == trigger)
            .collect()
    }

    /// Waits (bounded) until `GET /` answers `greeting`, and returns the
    /// generation that served it.
    pub(crate) fn wait_for_greeting(&self, greeting: &str) -> u64 {
        wait_until(
            APPLY_TIMEOUT,
            &format!("the greeting {greeting:?} to be served"),
            || self.get("/").body == greeting,
        );
        self.get("/").generation()
    }

    /// Asserts that `GET /` still answers `greeting` from `generation`, on
    /// this connection and on a new one.
    pub(crate) fn assert_serving(&self, greeting: &str, generation: u64) {
        for root in [self.get("/"), self.get_on_new_connection("/")] {
            assert_eq!(
                (root.body.as_str(), root.generation()),
                (greeting, generation),
                "GET / serves the expected greeting and generation"
            );
        }
    }

    /// Asserts `secret` appears nowhere the server printed.
    pub(crate) fn assert_not_printed(&self, secret: &str) {
        for (name, lines) in [("stderr", &self.stderr), ("stdout", &self.stdout)] {
            let text = lines.text();
            assert!(!text.contains(secret), "secret printed on {name}:\n{text}");
        }
    }

    /// Waits (bounded) until `GET /admin/history` holds the entry of
    /// `generation` (a watched or signalled reload is served a moment before
    /// it is recorded), and returns it.
    pub(crate) fn wait_for_history_entry(&self, generation: u64) -> Value {
        let mut found = None;
        wait_until(
            APPLY_TIMEOUT,
            &format!("generation {generation} in /admin/history"),
            || {
                found = self
                    .history()
                    .into_iter()
                    .find(|entry| entry["generation"] == generation);
                found.is_some()
            },
        );
        found.expect("found by the wait")
    }
}

/// Asserts `reply` is a successful reload answer (`200` with `generation`,
/// `previous`, `changed`, `rebuilt`, `took_ms`) that made `generation` out of
/// the one before, changing and rebuilding exactly what is listed.
pub(crate) fn assert_reloaded(reply: &Reply, generation: u64, changed: &[&str], rebuilt: &[&str]) {
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["generation"], generation, "{body}");
    assert_eq!(body["previous"], generation - 1, "{body}");
    assert_eq!(json_strings(&body["changed"]), changed, "{body}");
    assert_eq!(json_strings(&body["rebuilt"]), rebuilt, "{body}");
    assert!(body["took_ms"].is_u64(), "{body}");
}

/// Asserts `reply` refuses a change with `status`, an error message and the
/// `generation` that keeps serving; returns its JSON for case-specific checks.
pub(crate) fn assert_refused(reply: &Reply, status: u16, generation: u64) -> Value {
    assert_eq!(reply.status, status, "{reply:?}");
    let body = reply.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error message: {reply:?}"
    );
    assert_eq!(
        body["generation"], generation,
        "the serving generation: {reply:?}"
    );
    body
}

/// The strings of a JSON array (`changed`, `rebuilt`, `keys`).
pub(crate) fn json_strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("expected strings in {value}"))
        })
        .collect()
}
