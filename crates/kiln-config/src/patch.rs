use serde_json::Value;
use toml_edit::{DocumentMut, InlineTable, Item, Table};

/// A merge patch that cannot be applied to a TOML document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The source is not valid TOML.
    #[error("the file is not valid TOML: {message}")]
    Source {
        /// What the TOML parser said.
        message: String,
    },
    /// The source is not a TOML file at all.
    #[error("PATCH rewrites TOML files only; {origin} is not one")]
    NotToml {
        /// Where the configuration is stored (the file's path).
        origin: String,
    },
    /// The patch is not a JSON object.
    #[error(
        "a merge patch must be a JSON object of sections, e.g. {{\"app\": {{\"greeting\": \"hi\"}}}}"
    )]
    NotAnObject,
    /// A value has no TOML form.
    #[error("{path}: {reason}")]
    Value {
        /// Dotted key path.
        path: String,
        /// Why it cannot be written.
        reason: &'static str,
    },
}

/// Applies a JSON merge patch (RFC 7396) to a TOML document, keeping the
/// comments, key order and formatting of everything the patch does not
/// touch. `null` removes a key; an object merges into a table; anything
/// else replaces the value.
///
/// # Errors
///
/// When the document is not TOML, the patch is not an object, or a value
/// has no TOML form (`null` inside an array, say).
pub fn merge_patch_toml(text: &str, patch: &Value) -> Result<String, PatchError> {
    let mut document: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| PatchError::Source {
                message: e.to_string(),
            })?;
    let Value::Object(_) = patch else {
        return Err(PatchError::NotAnObject);
    };
    merge_table(document.as_table_mut(), patch, "")?;
    Ok(document.to_string())
}

fn merge_table(table: &mut Table, patch: &Value, path: &str) -> Result<(), PatchError> {
    let Value::Object(entries) = patch else {
        unreachable!("callers pass objects")
    };
    for (key, value) in entries {
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match value {
            Value::Null => {
                table.remove(key);
            }
            Value::Object(_) => {
                if !table.get(key).is_some_and(Item::is_table_like) {
                    let mut new = Table::new();
                    new.set_implicit(true);
                    table.insert(key, Item::Table(new));
                }
                match table.get_mut(key) {
                    Some(Item::Table(inner)) => merge_table(inner, value, &child)?,
                    Some(item) => {
                        let inner = item.as_inline_table_mut().expect("checked table-like");
                        merge_inline(inner, value, &child)?;
                    }
                    None => unreachable!("inserted above"),
                }
            }
            _ => match table.get_mut(key).and_then(Item::as_value_mut) {
                // Keep the old value's surrounding whitespace and comment.
                Some(old) => {
                    let decor = old.decor().clone();
                    *old = to_toml(value, &child)?;
                    *old.decor_mut() = decor;
                }
                None => {
                    table.insert(key, Item::Value(to_toml(value, &child)?));
                }
            },
        }
    }
    Ok(())
}

fn merge_inline(table: &mut InlineTable, patch: &Value, path: &str) -> Result<(), PatchError> {
    let Value::Object(entries) = patch else {
        unreachable!("callers pass objects")
    };
    for (key, value) in entries {
        match value {
            Value::Null => {
                table.remove(key);
            }
            Value::Object(_) => {
                // Merged into an empty table when there is none, so that
                // nulls inside a new object are dropped, as RFC 7396 says.
                if !table.get(key).is_some_and(|v| v.is_inline_table()) {
                    table.insert(key, InlineTable::new().into());
                }
                let inner = table
                    .get_mut(key)
                    .and_then(|v| v.as_inline_table_mut())
                    .expect("an inline table, inserted if missing");
                merge_inline(inner, value, &format!("{path}.{key}"))?;
            }
            _ => {
                table.insert(key, to_toml(value, &format!("{path}.{key}"))?);
            }
        }
    }
    Ok(())
}

fn to_toml(value: &Value, path: &str) -> Result<toml_edit::Value, PatchError> {
    let invalid = |reason| PatchError::Value {
        path: path.to_owned(),
        reason,
    };
    Ok(match value {
        Value::Null => return Err(invalid("null has no TOML form except to remove a key")),
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n
                .as_f64()
                .ok_or_else(|| invalid("number out of TOML's range"))?
                .into(),
        },
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => items
            .iter()
            .map(|item| to_toml(item, path))
            .collect::<Result<toml_edit::Array, _>>()?
            .into(),
        Value::Object(entries) => {
            let mut table = InlineTable::new();
            for (key, item) in entries {
                table.insert(key, to_toml(item, &format!("{path}.{key}"))?);
            }
            table.into()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOC: &str = "# kiln\n[server]\nworkers = 2 # fixed\n\n[app]\ngreeting = \"hi\"   # shown at /\nextra = 1\n";

    #[test]
    fn keeps_comments_order_and_formatting() {
        let out = merge_patch_toml(DOC, &json!({"app": {"greeting": "hello"}})).unwrap();
        assert_eq!(out, DOC.replace("\"hi\"", "\"hello\""));
    }

    #[test]
    fn null_removes_objects_merge_and_new_tables_appear() {
        let out = merge_patch_toml(
            DOC,
            &json!({"app": {"extra": null}, "pools": {"main": {"kind": "sqlite", "max_size": 4}}}),
        )
        .unwrap();
        assert!(!out.contains("extra"), "{out}");
        assert!(out.contains("# fixed"), "{out}");
        let parsed: toml_edit::DocumentMut = out.parse().unwrap();
        assert_eq!(parsed["pools"]["main"]["max_size"].as_integer(), Some(4));
    }

    /// Found by proptest: a null inside a new object under an inline table
    /// was refused as a value with no TOML form.
    #[test]
    fn null_inside_a_new_object_in_an_inline_table_is_dropped() {
        let out = merge_patch_toml("c = {}\n", &json!({"c": {"a": {"a": null, "b": 1}}})).unwrap();
        assert_eq!(out, "c = { a = { b = 1 } }\n");
    }

    #[test]
    fn refuses_what_toml_cannot_hold() {
        assert!(matches!(
            merge_patch_toml(DOC, &json!([1])),
            Err(PatchError::NotAnObject)
        ));
        let err =
            merge_patch_toml(DOC, &json!({"server": {"warm_requests": ["/", null]}})).unwrap_err();
        assert!(err.to_string().starts_with("server.warm_requests"), "{err}");
    }
}

/// RFC 7396's laws, checked on the TOML the patch is applied to (read back
/// as JSON). TOML cannot hold a table with no keys unless its header is
/// written, so results are compared with empty tables pruned.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Map;

    /// A JSON value TOML can hold (no null, no float).
    fn toml_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            "[ab ]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                object(inner),
            ]
        })
    }

    fn object(inner: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-d]", inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
    }

    /// A patch: like a document, with nulls (removals) at any depth, but
    /// never inside an array (TOML has no null to put there).
    fn patch() -> impl Strategy<Value = Value> {
        let member = prop_oneof![1 => Just(Value::Null), 4 => toml_value()];
        let tree = member.prop_recursive(2, 16, 3, |inner| {
            prop_oneof![Just(Value::Null), object(inner)]
        });
        object(tree)
    }

    /// A TOML text: top-level objects as `[tables]` or as inline tables.
    fn document() -> impl Strategy<Value = String> {
        (object(toml_value()), any::<bool>()).prop_map(|(doc, inline)| {
            if !inline {
                return merge_patch_toml("", &doc).expect("a null-free document is TOML");
            }
            doc.as_object()
                .expect("an object")
                .iter()
                .map(|(key, value)| {
                    let value = to_toml(value, key).expect("a null-free value is TOML");
                    format!("{} = {value}\n", toml_edit::Key::new(key.as_str()))
                })
                .collect()
        })
    }

    fn as_json(text: &str) -> Value {
        let document: DocumentMut = text.parse().expect("the result is TOML");
        prune(table_json(document.as_table()))
    }

    fn table_json(table: &Table) -> Value {
        Value::Object(
            table
                .iter()
                .map(|(key, item)| (key.to_owned(), item_json(item)))
                .collect(),
        )
    }

    fn item_json(item: &Item) -> Value {
        match item {
            Item::Value(value) => value_json(value),
            Item::Table(table) => table_json(table),
            Item::ArrayOfTables(tables) => tables.iter().map(table_json).collect(),
            Item::None => Value::Null,
        }
    }

    fn value_json(value: &toml_edit::Value) -> Value {
        use toml_edit::Value as T;
        match value {
            T::String(s) => Value::from(s.value().as_str()),
            T::Integer(i) => Value::from(*i.value()),
            T::Float(f) => Value::from(*f.value()),
            T::Boolean(b) => Value::from(*b.value()),
            T::Datetime(d) => Value::from(d.value().to_string()),
            T::Array(items) => items.iter().map(value_json).collect(),
            T::InlineTable(table) => Value::Object(
                table
                    .iter()
                    .map(|(key, value)| (key.to_owned(), value_json(value)))
                    .collect(),
            ),
        }
    }

    /// Drops objects left with no members (outside arrays), recursively.
    fn prune(value: Value) -> Value {
        match value {
            Value::Object(members) => Value::Object(
                members
                    .into_iter()
                    .map(|(key, value)| (key, prune(value)))
                    .filter(|(_, value)| value.as_object().is_none_or(|m| !m.is_empty()))
                    .collect(),
            ),
            other => other,
        }
    }

    /// RFC 7396, section 2, as written.
    fn rfc_merge_patch(target: &Value, patch: &Value) -> Value {
        let Value::Object(members) = patch else {
            return patch.clone();
        };
        let mut target = match target {
            Value::Object(target) => target.clone(),
            _ => Map::new(),
        };
        for (name, value) in members {
            if value.is_null() {
                target.remove(name);
            } else {
                let merged = rfc_merge_patch(target.get(name).unwrap_or(&Value::Null), value);
                target.insert(name.clone(), merged);
            }
        }
        Value::Object(target)
    }

    proptest! {
        /// The patched TOML reads back as RFC 7396 says it should.
        #[test]
        fn agrees_with_rfc_7396(text in document(), patch in patch()) {
            let out = merge_patch_toml(&text, &patch).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let expected = prune(rfc_merge_patch(&as_json(&text), &patch));
            prop_assert_eq!(as_json(&out), expected, "\n--- before\n{}--- after\n{}", text, out);
        }

        /// Applying a patch twice is applying it once, to the byte.
        #[test]
        fn is_idempotent(text in document(), patch in patch()) {
            let once = merge_patch_toml(&text, &patch).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let twice = merge_patch_toml(&once, &patch).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(once, twice);
        }

        /// A null removes its key, at any depth.
        #[test]
        fn null_removes_the_key(text in document(), key in "[a-d]", inner in "[a-d]") {
            let out = merge_patch_toml(&text, &serde_json::json!({ key.as_str(): null })).unwrap();
            prop_assert!(as_json(&out).get(&key).is_none(), "{}", out);
            let out = merge_patch_toml(&text, &serde_json::json!({ key.as_str(): { inner.as_str(): null } })).unwrap();
            prop_assert!(as_json(&out).get(&key).and_then(|v| v.get(&inner)).is_none(), "{}", out);
        }

        /// A patch without nulls, applied to an empty document, is the patch.
        #[test]
        fn a_null_free_patch_on_nothing_is_the_patch(patch in object(toml_value())) {
            let out = merge_patch_toml("", &patch).unwrap();
            prop_assert_eq!(as_json(&out), prune(patch));
        }
    }
}
