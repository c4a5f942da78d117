use serde_json::Value;
use toml_edit::{DocumentMut, InlineTable, Item, Table};

/// A merge patch that cannot be applied to a TOML document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The source is not valid TOML.
    #[error("the file is not valid TOML: {0}")]
    Source(String),
    /// The source is not a TOML file at all.
    #[error("PATCH rewrites TOML files only; {0} is not one")]
    NotToml(String),
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
    let mut document: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| PatchError::Source(e.to_string()))?;
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
            Value::Object(_) if table.get(key).is_some_and(|v| v.is_inline_table()) => {
                let inner = table
                    .get_mut(key)
                    .and_then(|v| v.as_inline_table_mut())
                    .expect("checked inline table");
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
