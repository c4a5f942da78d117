//! Parse + validate on arbitrary input: never panics, and every error names
//! the file, and a key path when one key is at fault.

use std::path::Path;

use kiln_config::{AppConfig, ConfigError, merge_patch_toml, parse};
use proptest::prelude::*;
use serde_json::{Map, Value};

#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct App {
    #[serde(default)]
    greeting: String,
}

impl AppConfig for App {}

/// kiln's own keys (and a few it does not have), so that documents reach
/// deep into the schema rather than failing on the first unknown key.
const KEYS: &[&str] = &[
    "server",
    "admin",
    "pools",
    "resources",
    "reload",
    "log",
    "app",
    "main",
    "listen",
    "workers",
    "warm_timeout",
    "shutdown_grace",
    "warm_requests",
    "token",
    "kind",
    "url",
    "max_size",
    "warm",
    "wait_timeout",
    "watch",
    "debounce",
    "history",
    "level",
    "format",
    "greeting",
    "nope",
];

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(1),
            Just(4),
            Just(70000),
            any::<i64>()
        ]
        .prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("sqlite"),
            Just("postgres"),
            Just("1s"),
            Just("0s"),
            Just("250ms"),
            Just("info"),
            Just("json"),
            Just("127.0.0.1:0"),
            Just("[::1]:80"),
            Just("a.sqlite3"),
            Just(""),
            Just("postgres://u:p@h/db"),
            Just("x y"),
            Just("/"),
        ]
        .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..4).prop_map(|m| {
                Value::Object(
                    m.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// A TOML document built from kiln-shaped JSON, or TOML-ish text.
fn input() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::btree_map(prop::sample::select(KEYS), value(), 0..5).prop_map(|m| {
            let doc = Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
            merge_patch_toml("", &doc).unwrap_or_default()
        }),
        1 => "[\\[\\]a-z_.=\"'{}, \n0-9:-]{0,60}",
    ]
}

fn check(error: &ConfigError) -> Result<(), TestCaseError> {
    let message = error.to_string();
    prop_assert!(message.starts_with("deploy.toml: "), "{}", message);
    if let Some(key) = error.key() {
        prop_assert!(
            !key.is_empty() && key != ".",
            "no key path named: {}",
            message
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_and_errors_name_the_file_and_key(text in input()) {
        if let Err(error) = parse::<App>(Path::new("deploy.toml"), text) {
            check(&error)?;
        }
    }
}
