//! The files in `deploy/` agree with the configuration they run: the
//! systemd unit's timeouts and the socket unit's addresses with
//! `deploy.toml`, the Kubernetes manifest's ports, probes and grace period
//! with `deploy/kubernetes/deploy.toml` (the ConfigMap), and every probe
//! path answers on a running server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use crate::util::{Config, Server};

/// What a stop must leave after the drain for closing pools and joining
/// threads, before systemd or kubelet sends SIGKILL.
const MARGIN: Duration = Duration::from_secs(2);

/// `kiln reload`'s own default for `--admin`.
const RELOAD_DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The demo's `[app]` section.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
struct Demo {
    greeting: String,
}

impl kiln::AppConfig for Demo {}

/// A config file as kiln reads it (no pool is opened).
fn load(path: &str) -> kiln::Config<Demo> {
    kiln::load_config::<Demo>(&repo(path))
        .unwrap_or_else(|e| panic!("{path} does not load: {e}"))
        .config
}

fn secs(value: &str) -> Duration {
    humantime::parse_duration(value).unwrap_or_else(|e| panic!("not a time span {value:?}: {e}"))
}

/// A systemd unit file: its `Key=value` lines with their section.
struct Unit {
    path: &'static str,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn read(path: &'static str) -> Unit {
        let mut section = String::new();
        let mut entries = Vec::new();
        for line in read(path).lines().map(str::trim) {
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{path}: not Key=value: {line}"));
            entries.push((section.clone(), key.to_owned(), value.to_owned()));
        }
        Unit { path, entries }
    }

    /// Every value of `key` in `section`, in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, value)| value.as_str())
            .collect()
    }

    /// The last value of `key` in `[Service]` (a later one overrides).
    fn service(&self, key: &str) -> &str {
        self.entries
            .iter()
            .rev()
            .find(|(section, k, _)| section == "Service" && k == key)
            .map(|(_, _, value)| value.as_str())
            .unwrap_or_else(|| panic!("{}: no {key}= in [Service]", self.path))
    }
}

/// The value after `flag` in a command line.
fn option<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|arg| *arg == flag)
        .map(|i| args[i + 1])
}

#[test]
fn systemd_unit_agrees_with_deploy_toml() {
    let config = load("deploy.toml");
    let server = &config.server;
    let unit = Unit::read("deploy/systemd/kiln.service");

    assert_eq!(unit.service("Type"), "notify");
    assert_eq!(
        unit.service("ExecStart"),
        "/usr/local/bin/kiln /etc/kiln/deploy.toml"
    );
    assert_eq!(unit.service("KillSignal"), "SIGTERM");
    assert_eq!(unit.service("Restart"), "on-failure");
    assert_eq!(unit.service("EnvironmentFile"), "-/etc/default/kiln");

    // `kiln reload`: to the admin address deploy.toml listens on, waiting
    // for a reload queued behind another, and giving up before systemd does
    // (TimeoutStartSec bounds ExecReload= too).
    let reload: Vec<&str> = unit.service("ExecReload").split_whitespace().collect();
    assert_eq!(reload[..2], ["/usr/local/bin/kiln", "reload"], "{reload:?}");
    let admin = option(&reload, "--admin").unwrap_or(RELOAD_DEFAULT_ADMIN);
    assert_eq!(admin, format!("http://{}", config.admin.listen));
    let start = secs(unit.service("TimeoutStartSec"));
    let reload_timeout = secs(option(&reload, "--timeout").unwrap_or("120s"));
    assert!(
        start >= server.warm_timeout + MARGIN,
        "TimeoutStartSec {start:?} does not cover server.warm_timeout {:?}",
        server.warm_timeout
    );
    assert!(
        reload_timeout >= 2 * server.warm_timeout && reload_timeout < start,
        "kiln reload --timeout {reload_timeout:?} should cover two warm-ups ({:?}) and end before TimeoutStartSec {start:?}",
        2 * server.warm_timeout
    );

    let stop = secs(unit.service("TimeoutStopSec"));
    let drain = server.drain_delay + server.shutdown_grace;
    assert!(
        stop >= drain + MARGIN,
        "TimeoutStopSec {stop:?} does not cover drain_delay + shutdown_grace ({drain:?}) + {MARGIN:?}"
    );

    // Socket activation: kiln matches the sockets to the keys by address.
    let socket = Unit::read("deploy/systemd/kiln.socket");
    let listen = [config.server.listen, config.admin.listen].map(|addr| addr.to_string());
    assert_eq!(socket.all("Socket", "ListenStream"), listen);
    assert_eq!(
        socket.all("Socket", "Accept"),
        [] as [&str; 0],
        "kiln accepts itself"
    );

    let drop_in = Unit::read("deploy/systemd/kiln.service.d/notify-reload.conf");
    assert_eq!(drop_in.service("Type"), "notify-reload");
    assert_eq!(drop_in.service("ReloadSignal"), "SIGHUP");
    assert_eq!(
        drop_in.service("ExecReload"),
        "",
        "the signal alone reloads: ExecReload= must be reset"
    );
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn int(value: &Yaml, what: &str) -> u64 {
    value
        .as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or_else(|| panic!("{what}: not a non-negative integer: {value:?}"))
}

fn string<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {value:?}"))
}

fn list<'a>(value: &'a Yaml, what: &str) -> &'a [Yaml] {
    value
        .as_vec()
        .unwrap_or_else(|| panic!("{what}: not a list: {value:?}"))
}

/// The Deployment's container `kiln` in `deploy/kubernetes/kiln.yaml`, and
/// the documents it came from.
fn manifest() -> Vec<Yaml> {
    yaml("deploy/kubernetes/kiln.yaml")
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|doc| doc["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("kiln.yaml has no {kind}"))
}

fn kiln_container(deployment: &Yaml) -> &Yaml {
    list(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    )
    .iter()
    .find(|c| c["name"].as_str() == Some("kiln"))
    .expect("a container named kiln")
}

const PROBES: [(&str, &str); 3] = [
    ("startupProbe", "/readyz"),
    ("readinessProbe", "/readyz"),
    ("livenessProbe", "/healthz"),
];

#[test]
fn kubernetes_manifest_agrees_with_its_config() {
    // The ConfigMap is deploy/kubernetes/deploy.toml, under a fixed name.
    let kustomization = &yaml("deploy/kubernetes/kustomization.yaml")[0];
    let resources: Vec<&str> = list(&kustomization["resources"], "resources")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(resources, ["kiln.yaml"]);
    let generator = &list(&kustomization["configMapGenerator"], "configMapGenerator")[0];
    let config_map = string(&generator["name"], "configMapGenerator name");
    let files: Vec<&str> = list(&generator["files"], "files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(files, ["deploy.toml"]);
    assert_eq!(
        generator["options"]["disableNameSuffixHash"].as_bool(),
        Some(true),
        "a hashed name would roll the pods instead of updating the mounted file"
    );
    let config = load("deploy/kubernetes/deploy.toml");
    let server = &config.server;

    let docs = manifest();
    let deployment = of_kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = kiln_container(deployment);

    // The main listener is where the Service and kubelet reach it.
    assert!(
        server.listen.ip().is_unspecified(),
        "server.listen {} is unreachable from outside the pod",
        server.listen
    );
    let ports = list(&container["ports"], "ports");
    let http = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("a port named http");
    assert_eq!(
        int(&http["containerPort"], "containerPort"),
        u64::from(server.listen.port())
    );
    // The admin API stays on the pod's loopback, and has a token.
    assert!(
        config.admin.listen.ip().is_loopback(),
        "{}",
        config.admin.listen
    );
    assert!(
        ports
            .iter()
            .all(|p| p["containerPort"].as_i64() != Some(config.admin.listen.port().into())),
        "the admin port is declared as a container port"
    );
    let token = list(&container["env"], "env")
        .iter()
        .find(|e| e["name"].as_str() == Some("KILN__ADMIN__TOKEN"))
        .expect("KILN__ADMIN__TOKEN in env");
    assert!(
        !token["valueFrom"]["secretKeyRef"]["name"].is_badvalue(),
        "the token comes from a Secret: {token:?}"
    );

    for (probe, path) in PROBES {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("http"), "{probe}");
    }
    // kiln binds only after warm-up: the startup probe must outlast it.
    let startup = &container["startupProbe"];
    let allowed = Duration::from_secs(
        int(&startup["failureThreshold"], "failureThreshold")
            * int(&startup["periodSeconds"], "periodSeconds"),
    );
    assert!(
        allowed >= server.warm_timeout,
        "startupProbe allows {allowed:?}, less than server.warm_timeout {:?}",
        server.warm_timeout
    );

    // SIGTERM comes after preStop; then drain_delay, then shutdown_grace.
    let pre_stop = Duration::from_secs(int(
        &container["lifecycle"]["preStop"]["sleep"]["seconds"],
        "preStop.sleep.seconds",
    ));
    assert!(!server.drain_delay.is_zero(), "server.drain_delay is 0s");
    let grace = Duration::from_secs(int(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    ));
    let needed = pre_stop + server.drain_delay + server.shutdown_grace + MARGIN;
    assert!(
        grace >= needed,
        "terminationGracePeriodSeconds {grace:?} < preStop {pre_stop:?} + drain_delay + shutdown_grace + {MARGIN:?} = {needed:?}"
    );

    // The ConfigMap is mounted as the config file's folder, never with
    // subPath (which never updates), and kiln watches it.
    let args = list(&container["args"], "args");
    let config_path = Path::new(string(&args[0], "args[0]"));
    assert_eq!(
        config_path.file_name().and_then(|n| n.to_str()),
        Some("deploy.toml")
    );
    let volume = list(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(config_map))
        .expect("a volume of the ConfigMap");
    let mount = list(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap volume is mounted");
    assert!(mount["subPath"].is_badvalue(), "subPath never updates");
    assert_eq!(
        mount["mountPath"].as_str().map(Path::new),
        config_path.parent()
    );
    assert!(config.reload.watch, "reload.watch is off");

    // The Service sends to that port, on these pods.
    let service = of_kind(&docs, "Service");
    let target = &list(&service["spec"]["ports"], "Service ports")[0]["targetPort"];
    assert_eq!(target.as_str(), Some("http"));
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
}

#[test]
fn kubernetes_probe_paths_answer_on_a_running_server() {
    let docs = manifest();
    let container = kiln_container(of_kind(&docs, "Deployment"));
    let server = Server::start(&Config::sqlite().render());
    for (probe, _) in PROBES {
        let path = string(&container[probe]["httpGet"]["path"], probe);
        let reply = server.get(path);
        assert_eq!(reply.status, 200, "{probe} {path}: {reply:?}");
    }
}
