//! Config files: a temp folder holding a kiln config document built from the
//! contract's template.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use tempfile::TempDir;

use super::*;

/// A kiln config document, built from the contract's template with overrides.
/// Values are raw TOML so tests can also write wrong types on purpose.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Config {
    fn base(kind: &str, url: &str) -> Config {
        Config {
            sections: Vec::new(),
        }
        .set_str("server.listen", "127.0.0.1:0")
        .set("server.workers", "2")
        .set_str("server.warm_timeout", "30s")
        .set_str("server.shutdown_grace", "10s")
        .set("server.warm_requests", r#"["/"]"#)
        .set_str("admin.listen", "127.0.0.1:0")
        .set_str("pools.main.kind", kind)
        .set_str("pools.main.url", url)
        .set("pools.main.max_size", "4")
        .set("pools.main.warm", "4")
        .set_str("pools.main.wait_timeout", "10s")
        .set_str("log.level", "info")
        .set_str("log.format", "pretty")
        .set_str("app.greeting", "Hello from kiln")
    }

    /// Pool `main` on a SQLite file relative to the config file's folder.
    pub(crate) fn sqlite() -> Config {
        Config::base("sqlite", "data/kiln.sqlite3")
    }

    /// Pool `main` on PostgreSQL at `url`.
    pub(crate) fn postgres(url: &str) -> Config {
        Config::base("postgres", url)
    }

    /// Sets `section.key` (the last dot separates the key) to a raw TOML value,
    /// adding the key or section when missing.
    pub(crate) fn set(mut self, path: &str, raw: &str) -> Config {
        let (section, key) = path
            .rsplit_once('.')
            .expect("a key path like server.workers");
        let index = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_owned(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let entries = &mut self.sections[index].1;
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = raw.to_owned(),
            None => entries.push((key.to_owned(), raw.to_owned())),
        }
        self
    }

    /// Sets a string value.
    pub(crate) fn set_str(self, path: &str, value: &str) -> Config {
        self.set(path, &toml_str(value))
    }

    pub(crate) fn greeting(self, greeting: &str) -> Config {
        self.set_str("app.greeting", greeting)
    }

    /// Fixed listen addresses instead of ephemeral ones.
    pub(crate) fn listen_on(self, main: SocketAddr, admin: SocketAddr) -> Config {
        self.set_str("server.listen", &main.to_string())
            .set_str("admin.listen", &admin.to_string())
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for (section, entries) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (key, value) in entries {
                out.push_str(&format!("{key} = {value}\n"));
            }
            out.push('\n');
        }
        out
    }
}

/// A TOML basic string. JSON string escapes are a subset of TOML's.
pub(crate) fn toml_str(value: &str) -> String {
    serde_json::to_string(value).expect("a string serializes")
}

/// A temp folder laid out as `etc/kiln.toml` (the config) and `run/` (the
/// process's working directory), so that relative paths resolved against the
/// wrong folder are visible and never land in the repository.
#[derive(Clone)]
pub(crate) struct Site(Arc<TempDir>);

impl Site {
    pub(crate) fn new(config: &str) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("kiln-test-")
            .tempdir()
            .expect("create a temp dir");
        std::fs::create_dir(dir.path().join("etc")).expect("create etc/");
        std::fs::create_dir(dir.path().join("run")).expect("create run/");
        let site = Site(Arc::new(dir));
        site.write_config(config);
        site
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.path("kiln.toml")
    }

    /// A path relative to the config file's folder.
    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.0.path().join("etc").join(relative)
    }

    pub(crate) fn cwd(&self) -> PathBuf {
        self.0.path().join("run")
    }

    /// Replaces the config file atomically, so a reader never sees half of it.
    pub(crate) fn write_config(&self, text: &str) {
        let tmp = self.path("kiln.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config into place");
    }

    /// `kiln` run from this site's working directory.
    pub(crate) fn command(&self) -> Command {
        self.command_via(&[])
    }

    /// [`Site::command`] through `wrapper` (see [`kiln_command_via`]).
    pub(crate) fn command_via(&self, wrapper: &[&str]) -> Command {
        let mut cmd = kiln_command_via(wrapper);
        cmd.current_dir(self.cwd());
        cmd
    }
}
