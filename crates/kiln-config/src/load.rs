use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Source as _};
use serde_json::Value;

use crate::{AppConfig, Config, ConfigError, ErrorKind};

/// A configuration as loaded: the typed document, the merged source it came
/// from (file plus environment, before defaults), the file's path and text.
///
/// Its `Debug` shows the typed document (secrets as `***`) and the path,
/// never `raw` or `text`.
#[derive(Clone)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The typed, validated document.
    pub config: Config<A>,
    /// The merged source as written (file plus environment overrides),
    /// secrets included: compare it, never print it.
    pub raw: Value,
    /// The file it was read from.
    pub source: PathBuf,
    /// The file's text, exactly as read (secrets included: never print it).
    pub text: String,
    /// The key paths an environment variable sets, each with the variable's
    /// name (`app.greeting` → `KILN__APP__GREETING`): the file's value for
    /// them is not the one served.
    pub env_overrides: BTreeMap<String, String>,
}

impl<A: fmt::Debug> fmt::Debug for Loaded<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `raw` and `text` hold secrets in clear: never shown.
        f.debug_struct("Loaded")
            .field("config", &self.config)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Reads `path` (TOML, YAML or JSON by extension), applies
/// `KILN__SECTION__KEY` environment overrides, then deserializes and
/// validates the result.
///
/// # Errors
///
/// A [`ConfigError`] naming the file, the key path and what was expected.
pub fn load<A: AppConfig>(path: &Path) -> Result<Loaded<A>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path,
            ErrorKind::Syntax(format!("cannot read the file: {e}")),
        )
    })?;
    parse(path, text)
}

/// Like [`load`], with the file's text given: for a candidate document
/// (a patch, a rollback) that is validated before it is written to `path`.
///
/// # Errors
///
/// A [`ConfigError`] naming the file, the key path and what was expected.
pub fn parse<A: AppConfig>(path: &Path, text: String) -> Result<Loaded<A>, ConfigError> {
    parse_layers(path, path, text, None)
}

/// A document laid over the configuration file: a fleet's shared document
/// (TOML), named as errors name it (`fleet "web" version 7`).
#[derive(Clone, Copy, Debug)]
pub struct Overlay<'a> {
    /// What errors in it name instead of a file.
    pub name: &'a str,
    /// The document (TOML).
    pub text: &'a str,
}

/// The sections an [`Overlay`] may not set: they are each instance's own.
const LOCAL_SECTIONS: &[(&str, &str)] = &[
    (
        "fleet",
        "no [fleet]: it says where each instance finds the fleet, so it stays in the instance's own file",
    ),
    (
        "admin",
        "no [admin]: the admin listener and its token are each instance's own (its file and environment)",
    ),
];

/// Like [`parse`], with `overlay` laid over the file's text `local` before
/// the environment: file < overlay < environment. The [`Loaded::text`] is
/// the overlay's (what a patch edits); errors in it name the overlay. An
/// overlay that sets `[fleet]` or `[admin]` is refused, naming the section.
///
/// # Errors
///
/// A [`ConfigError`] naming the file or the overlay, the key path and what
/// was expected.
pub fn parse_overlaid<A: AppConfig>(
    path: &Path,
    local: &str,
    overlay: Overlay<'_>,
) -> Result<Loaded<A>, ConfigError> {
    let named = Path::new(overlay.name);
    let document: toml_edit::DocumentMut =
        overlay.text.parse().map_err(|e: toml_edit::TomlError| {
            ConfigError::new(named, ErrorKind::Syntax(e.to_string()))
        })?;
    for (section, expected) in LOCAL_SECTIONS {
        if document.contains_key(section) {
            return Err(ConfigError::new(
                named,
                crate::Invalid::new(*section, *expected, format!("[{section}]")),
            ));
        }
    }
    // The overlay is valid TOML: an error below comes from the layers
    // together, and the overlay is what changed.
    let mut loaded = parse_layers(path, named, local.to_owned(), Some(overlay.text))?;
    loaded.source = path.to_path_buf();
    Ok(loaded)
}

/// `text` (in the format `file`'s name says), then `overlay` (TOML), then
/// the environment; errors name `path`.
fn parse_layers<A: AppConfig>(
    file: &Path,
    path: &Path,
    text: String,
    overlay: Option<&str>,
) -> Result<Loaded<A>, ConfigError> {
    let format = format_of(file).ok_or_else(|| {
        ConfigError::new(
            path,
            ErrorKind::Syntax(
                "unknown format: name the file *.toml, *.yaml, *.yml or *.json".to_owned(),
            ),
        )
    })?;
    let syntax = |e: config::ConfigError| {
        ConfigError::new(path, ErrorKind::Syntax(strip_origin(e.to_string())))
    };
    let variables = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    let env_overrides = env_overrides(&environment(), variables.collect()).map_err(syntax)?;
    let mut builder = config::Config::builder().add_source(File::from_str(&text, format));
    if let Some(overlay) = overlay {
        builder = builder.add_source(File::from_str(overlay, FileFormat::Toml));
    }
    let merged = builder.add_source(environment()).build().map_err(syntax)?;

    let raw: Value = merged
        .clone()
        .try_deserialize()
        .map_err(|e| ConfigError::new(path, ErrorKind::Syntax(e.to_string())))?;
    let config: Config<A> = serde_path_to_error::deserialize(merged).map_err(|e| {
        let key = key_path(e.path());
        let message = strip_origin(e.into_inner().to_string());
        let kind = match key {
            Some(path) => ErrorKind::Type { path, message },
            // The document itself is at fault (not a table): the file is named.
            None => ErrorKind::Syntax(message),
        };
        ConfigError::new(path, kind)
    })?;
    config
        .validate()
        .map_err(|invalid| ConfigError::new(path, invalid))?;
    Ok(Loaded {
        config,
        raw,
        source: path.to_path_buf(),
        text: overlay.map_or(text, str::to_owned),
        env_overrides,
    })
}

/// A dotted key path as TOML writes it, items as `[i]`: a key that is
/// empty or holds a dot, a space or a quote is quoted (`app."a.b"`, `""`).
/// `None` at the root.
fn key_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        let key = match segment {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } | Segment::Enum { variant: key } => key.as_str(),
            Segment::Unknown => "?",
        };
        if !out.is_empty() {
            out.push('.');
        }
        let bare = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '?'));
        if bare {
            out.push_str(key);
        } else {
            out.push_str(&serde_json::to_string(key).expect("a string serializes"));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The `KILN__SECTION__KEY` overrides.
fn environment() -> Environment {
    Environment::with_prefix("KILN")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
}

/// The key paths `environment` sets, each with the name among `variables`
/// that sets it. config-rs matches the prefix and lowercases the rest: the
/// same rule finds the name.
fn env_overrides(
    environment: &Environment,
    variables: Vec<String>,
) -> Result<BTreeMap<String, String>, config::ConfigError> {
    Ok(environment
        .collect()?
        .into_keys()
        .filter_map(|key| {
            let lowered = format!("kiln__{}", key.replace('.', "__"));
            let variable = variables
                .iter()
                .find(|name| name.to_lowercase() == lowered)?;
            Some((key, variable.clone()))
        })
        .collect())
}

/// The file format its extension names.
pub fn format_of(path: &Path) -> Option<FileFormat> {
    match path.extension()?.to_str()? {
        "toml" => Some(FileFormat::Toml),
        "yaml" | "yml" => Some(FileFormat::Yaml),
        "json" => Some(FileFormat::Json),
        _ => None,
    }
}

/// config-rs appends ` for key `…` in …` or ` in …`; kiln already names the
/// file and key in front, so the tail only repeats them.
fn strip_origin(mut message: String) -> String {
    for marker in [" for key `", " in "] {
        if let Some(at) = message.rfind(marker) {
            if marker == " in " && !message[at..].contains(std::path::MAIN_SEPARATOR) {
                continue;
            }
            message.truncate(at);
            break;
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct App {
        greeting: String,
    }
    impl AppConfig for App {}

    fn load_text(text: &str) -> Result<Loaded<App>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    const POOL: &str = "[pools.main]\nkind = \"sqlite\"\nurl = \"a.sqlite3\"\n";

    fn overlaid(local: &str, overlay: &str) -> Result<Loaded<App>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy.toml");
        let overlay = Overlay {
            name: "fleet \"web\" version 3",
            text: overlay,
        };
        parse_overlaid(&path, local, overlay)
    }

    #[test]
    fn an_overlay_lies_between_the_file_and_the_environment() {
        let loaded = overlaid(
            &format!("{POOL}max_size = 4\n[app]\ngreeting = \"local\"\n"),
            "[app]\ngreeting = \"fleet\"\n[pools.main]\nwarm = 2\n",
        )
        .unwrap();
        assert_eq!(loaded.config.app.greeting, "fleet");
        assert_eq!(loaded.config.pools["main"].max_size, 4, "the file's");
        assert_eq!(loaded.config.pools["main"].warm_count(), 2, "the overlay's");
        assert_eq!(
            loaded.text, "[app]\ngreeting = \"fleet\"\n[pools.main]\nwarm = 2\n",
            "the text is the overlay's: what a patch edits"
        );
        assert!(loaded.source.ends_with("deploy.toml"));
    }

    #[test]
    fn an_overlay_may_not_set_fleet_or_admin_and_its_errors_name_it() {
        for section in ["fleet", "admin"] {
            let err = overlaid(POOL, &format!("[{section}]\nname = \"x\"\n")).unwrap_err();
            assert_eq!(err.key(), Some(section), "{err}");
            let text = err.to_string();
            assert!(text.starts_with("fleet \"web\" version 3: "), "{text}");
            assert!(text.contains(&format!("no [{section}]")), "{text}");
        }
        let err = overlaid(POOL, "[pools.main]\nwarm = 99\n").unwrap_err();
        assert_eq!(err.key(), Some("pools.main.warm"), "{err}");
        assert!(err.to_string().starts_with("fleet \"web\""), "{err}");
        let err = overlaid(POOL, "[pools.main\n").unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Syntax(_)), "{err}");
    }

    #[test]
    fn fleet_defaults_and_checks() {
        let loaded = load_text("[fleet]\nstore = \"postgres://k:pw@db/x\"\n").unwrap();
        let fleet = loaded.config.fleet.as_ref().unwrap();
        assert_eq!(fleet.name, "default");
        assert_eq!(fleet.instance, None);
        assert_eq!(fleet.heartbeat.as_secs(), 5);
        assert_eq!(fleet.poll.as_secs(), 30);
        assert_eq!(fleet.ack_timeout.as_secs(), 10);
        assert!(fleet.listen);
        let json = serde_json::to_string(&loaded.config).unwrap();
        assert!(json.contains("postgres://k:***@db/x"), "{json}");
        assert!(!json.contains("pw"), "{json}");
        for (text, key) in [
            ("name = \"a b\"", "fleet.name"),
            ("instance = \"\"", "fleet.instance"),
            ("poll = \"0s\"", "fleet.poll"),
        ] {
            let err =
                load_text(&format!("[fleet]\nstore = \"postgres://db\"\n{text}\n")).unwrap_err();
            assert_eq!(err.key(), Some(key), "{text}: {err}");
        }
        let err = load_text("[fleet]\nstore = \" \"\n").unwrap_err();
        assert_eq!(err.key(), Some("fleet.store"), "{err}");
        let err = load_text("[fleet]\nname = \"web\"\n").unwrap_err();
        assert!(err.to_string().contains("store"), "{err}");
    }

    #[test]
    fn defaults_fill_absent_sections() {
        let loaded = load_text(POOL).unwrap();
        assert_eq!(loaded.config.server.listen.port(), 8080);
        assert_eq!(loaded.config.pools["main"].warm_count(), 8);
        assert_eq!(loaded.raw["pools"]["main"]["kind"], "sqlite");
    }

    #[test]
    fn header_read_timeout_zero_is_no_limit_and_others_are_kept() {
        let limit = |value: &str| {
            load_text(&format!(
                "[server]\nheader_read_timeout = \"{value}\"\n{POOL}"
            ))
            .unwrap()
            .config
            .server
            .header_read_limit()
        };
        assert_eq!(limit("0s"), None);
        assert_eq!(limit("1s"), Some(std::time::Duration::from_secs(1)));
        assert_eq!(
            load_text(POOL).unwrap().config.server.header_read_limit(),
            Some(std::time::Duration::from_secs(30)),
            "the default"
        );
    }

    #[test]
    fn out_of_range_names_file_key_and_expectation() {
        let err = load_text(&format!("{POOL}max_size = 0\n")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.ends_with("deploy.toml: pools.main.max_size: expected an integer ≥ 1, found 0"),
            "{text}"
        );
        assert_eq!(err.key(), Some("pools.main.max_size"));
    }

    #[test]
    fn wrong_type_names_key() {
        let err = load_text(&format!("{POOL}max_size = \"lots\"\n")).unwrap_err();
        assert_eq!(err.key(), Some("pools.main.max_size"), "{err}");
        let err = load_text(&format!("{POOL}max_size = -3\n")).unwrap_err();
        assert_eq!(err.key(), Some("pools.main.max_size"), "{err}");
        assert!(err.to_string().contains("-3"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load_text(&format!("{POOL}max_sise = 3\n")).unwrap_err();
        assert!(err.to_string().contains("max_sise"), "{err}");
        let err = load_text("[app]\ngreting = \"hi\"\n").unwrap_err();
        assert!(err.to_string().contains("greting"), "{err}");
        let err = load_text("[serve]\nworkers = 1\n").unwrap_err();
        assert!(err.to_string().contains("serve"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = load_text("[server\nworkers = 1\n").unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Syntax(_)), "{err}");
        assert!(err.to_string().contains("deploy.toml"), "{err}");
    }

    #[test]
    fn durations_and_secrets() {
        let loaded = load_text(
            "[server]\nwarm_timeout = \"250ms\"\n[admin]\ntoken = \"hunter2hunter2hunter2\"\n",
        )
        .unwrap();
        assert_eq!(loaded.config.server.warm_timeout.as_millis(), 250);
        let json = serde_json::to_string(&loaded.config).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        let err = load_text("[server]\nwarm_timeout = \"soon\"\n").unwrap_err();
        assert_eq!(err.key(), Some("server.warm_timeout"), "{err}");
    }

    #[test]
    fn header_read_timeout_is_a_duration_and_zero_turns_it_off() {
        let loaded = load_text("[server]\nheader_read_timeout = \"0s\"\n").unwrap();
        assert!(loaded.config.server.header_read_timeout.is_zero());
        let err = load_text("[server]\nheader_read_timeout = 30\n").unwrap_err();
        assert_eq!(err.key(), Some("server.header_read_timeout"), "{err}");
        assert!(err.to_string().contains("duration"), "{err}");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let loaded = load_text(
            "[admin]\ntoken = \"tok-debug-secret\"\n[pools.main]\nkind = \"postgres\"\nurl = \"host=db password='pw debug' user=k\"\n",
        )
        .unwrap();
        let printed = format!("{loaded:?}");
        // Whole words: the temporary folder's random name is printed too.
        for secret in ["tok-debug-secret", "pw debug", "debug'"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("deploy.toml"), "{printed}");
    }

    #[test]
    fn admin_origins_and_hosts_are_checked() {
        let loaded = load_text(
            "[admin]\nallowed_origins = [\"https://ops.example\", \"http://127.0.0.1:3000\"]\nallowed_hosts = [\"kiln.internal\", \"[fd00::1]\"]\n",
        )
        .unwrap();
        assert_eq!(
            loaded.config.admin.allowed_hosts,
            ["kiln.internal", "[fd00::1]"]
        );
        for (text, key) in [
            (
                "allowed_origins = [\"ops.example\"]",
                "admin.allowed_origins[0]",
            ),
            (
                "allowed_origins = [\"https://ops.example/\"]",
                "admin.allowed_origins[0]",
            ),
            (
                "allowed_origins = [\"https://a.example\", \"https://\"]",
                "admin.allowed_origins[1]",
            ),
            (
                "allowed_hosts = [\"kiln.internal:9090\"]",
                "admin.allowed_hosts[0]",
            ),
            (
                "allowed_hosts = [\"http://kiln.internal\"]",
                "admin.allowed_hosts[0]",
            ),
            ("allowed_hosts = [\"\"]", "admin.allowed_hosts[0]"),
        ] {
            let err = load_text(&format!("[admin]\n{text}\n")).unwrap_err();
            assert_eq!(err.key(), Some(key), "{text}: {err}");
        }
    }

    #[test]
    fn env_overrides_name_each_key_and_its_variable() {
        let variables = [
            ("KILN__APP__GREETING", "hi"),
            ("Kiln__Pools__Main__Max_Size", "3"),
            ("KILNX__APP__OTHER", "no"),
        ];
        let environment = environment().source(Some(
            variables
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        let names = variables.iter().map(|(k, _)| k.to_string()).collect();
        let overrides = env_overrides(&environment, names).unwrap();
        assert_eq!(
            overrides.into_iter().collect::<Vec<_>>(),
            [
                ("app.greeting".to_owned(), "KILN__APP__GREETING".to_owned()),
                (
                    "pools.main.max_size".to_owned(),
                    "Kiln__Pools__Main__Max_Size".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn public_admin_needs_a_token() {
        let err = load_text("[admin]\nlisten = \"0.0.0.0:9090\"\n").unwrap_err();
        assert_eq!(err.key(), Some("admin.token"), "{err}");
    }

    /// Found by `cargo fuzz` (parse_config): an empty key was named as an
    /// empty key path (`deploy.toml: : unknown field ```).
    #[test]
    fn an_empty_key_is_named_quoted() {
        let error = load_text("''=2").unwrap_err();
        assert_eq!(error.key(), Some("\"\""), "{error}");
        let error = load_text(&format!("{POOL}[app]\n''=2")).unwrap_err();
        assert_eq!(error.key(), Some("app.\"\""), "{error}");
        let error = load_text(&format!("{POOL}[app]\n'a.b'=2")).unwrap_err();
        assert_eq!(error.key(), Some("app.\"a.b\""), "{error}");
    }

    /// A document that is not a table at all has no key to name: the error
    /// names the file.
    #[test]
    fn a_document_that_is_no_table_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy.json");
        std::fs::write(&path, "\"text\"").unwrap();
        let error = load::<App>(&path).unwrap_err();
        assert!(
            error.to_string().starts_with(&path.display().to_string()),
            "{error}"
        );
        assert!(
            error.key().is_none_or(|k| !k.is_empty() && k != "."),
            "{error}"
        );
    }
}
