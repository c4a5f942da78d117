//! A kiln configuration file for one benchmark run.

use std::net::SocketAddr;

use kiln_bench::process::{Server, free_port};

use crate::Common;

/// A kiln configuration for one benchmark run.
#[derive(Clone)]
pub(crate) struct KilnConf {
    pub(crate) port: u16,
    pub(crate) admin_port: u16,
    pub(crate) workers: usize,
    pub(crate) reuse_port: bool,
    pub(crate) header_read_timeout: &'static str,
    /// More `[server]` lines, verbatim.
    pub(crate) server_extra: &'static str,
    pub(crate) warm_requests: Vec<String>,
    pub(crate) pool_kind: &'static str,
    pub(crate) pool_url: String,
    pub(crate) max_size: usize,
    pub(crate) warm: usize,
    pub(crate) wait_timeout: &'static str,
    pub(crate) greeting: String,
    pub(crate) log_level: &'static str,
    /// `log.access`: one log line per request.
    pub(crate) access_log: bool,
}

impl KilnConf {
    pub(crate) fn new(workers: usize) -> anyhow::Result<Self> {
        Ok(Self {
            port: free_port()?,
            admin_port: free_port()?,
            workers,
            reuse_port: false,
            header_read_timeout: "30s",
            server_extra: "",
            warm_requests: vec!["/".to_owned()],
            pool_kind: "sqlite",
            pool_url: "kiln-bench.sqlite3".to_owned(),
            max_size: 8,
            warm: 8,
            wait_timeout: "2s",
            greeting: "Hello from kiln".to_owned(),
            log_level: "info",
            access_log: false,
        })
    }

    pub(crate) fn postgres(mut self, url: String, size: usize, warm: usize) -> Self {
        self.pool_kind = "postgres";
        self.pool_url = url;
        self.max_size = size;
        self.warm = warm;
        self
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    pub(crate) fn toml(&self) -> String {
        let warm_requests: Vec<String> = self
            .warm_requests
            .iter()
            .map(|p| format!("{p:?}"))
            .collect();
        format!(
            r#"# Written by kiln-bench.
[server]
listen = "127.0.0.1:{port}"
workers = {workers}
reuse_port = {reuse_port}
header_read_timeout = "{header_read_timeout}"
warm_timeout = "30s"
shutdown_grace = "2s"
warm_requests = [{warm_requests}]
{server_extra}
[admin]
listen = "127.0.0.1:{admin_port}"

[pools.main]
kind = "{kind}"
url = "{url}"
max_size = {max_size}
warm = {warm}
wait_timeout = "{wait_timeout}"

[log]
level = "{log_level}"
format = "pretty"
access = {access_log}

[app]
greeting = "{greeting}"
"#,
            port = self.port,
            workers = self.workers,
            reuse_port = self.reuse_port,
            header_read_timeout = self.header_read_timeout,
            server_extra = self.server_extra,
            warm_requests = warm_requests.join(", "),
            admin_port = self.admin_port,
            kind = self.pool_kind,
            url = self.pool_url,
            max_size = self.max_size,
            warm = self.warm,
            wait_timeout = self.wait_timeout,
            log_level = self.log_level,
            access_log = self.access_log,
            greeting = self.greeting,
        )
    }

    /// Writes the file and starts kiln on it.
    pub(crate) fn start(
        &self,
        c: &Common,
        name: &str,
        cpus: Option<&str>,
    ) -> anyhow::Result<Server> {
        let path = c.tmp(&format!("{name}.toml"));
        std::fs::write(&path, self.toml())?;
        Server::start(
            &c.bin("kiln"),
            &[path.display().to_string()],
            &[],
            cpus,
            Some(&c.tmp(&format!("{name}.log"))),
        )
    }

    pub(crate) fn write(&self, c: &Common, name: &str) -> anyhow::Result<()> {
        std::fs::write(c.tmp(&format!("{name}.toml")), self.toml())?;
        Ok(())
    }
}
