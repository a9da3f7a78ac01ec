//! Walking one Kubernetes document: typed reads of its fields, each bad value an error naming
//! the field, and a warning for every field left unread (so nothing is dropped silently).

use std::collections::BTreeMap;

use orch_core::model::manifest::ManifestError;
use orch_core::model::validate::FieldError;
use serde_json::{Map, Value};

use crate::Warning;

/// Where one document's warnings and errors go.
pub(crate) struct Ctx<'a> {
    /// The file.
    pub source: &'a str,
    /// 1-based document number.
    pub document: usize,
    /// Every field not honoured.
    pub warnings: Vec<Warning>,
    /// Every problem.
    pub errors: Vec<ManifestError>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(source: &'a str, document: usize) -> Ctx<'a> {
        Ctx {
            source,
            document,
            warnings: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A warning at `path`.
    pub(crate) fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Warning {
            source: self.source.into(),
            document: self.document,
            path: path.into(),
            message: message.into(),
        });
    }

    /// An error at `path` about `value` (as written; empty when missing).
    pub(crate) fn error(&mut self, path: &str, value: &str, message: impl Into<String>) {
        self.errors.push(ManifestError {
            source: self.source.into(),
            document: Some(self.document),
            field: Some(FieldError {
                path: path.into(),
                value: value.into(),
                message: message.into(),
            }),
            message: String::new(),
        });
    }
}

/// A value as the user wrote it, for error messages (JSON: strings quoted).
pub(crate) fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        let cut = (0..=80).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

/// JSON's name for the kind of a value.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The fields of one mapping, each read at most once; [`Fields::finish`] warns about the rest.
pub(crate) struct Fields<'v> {
    path: String,
    map: Option<&'v Map<String, Value>>,
    used: Vec<&'v str>,
}

impl<'v> Fields<'v> {
    /// The mapping `v` at `path` (`""` for a document's root); anything else but null is an
    /// error, and reads as an empty mapping.
    pub(crate) fn new(cx: &mut Ctx, v: &'v Value, path: &str) -> Fields<'v> {
        let map = match v {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => {
                cx.error(
                    if path.is_empty() { "(document)" } else { path },
                    &shown(other),
                    format!("must be a mapping, not {}", type_name(other)),
                );
                None
            }
        };
        Fields {
            path: path.into(),
            map,
            used: Vec::new(),
        }
    }

    /// The path of `key` under this mapping.
    pub(crate) fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.into()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// This mapping's own path.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Whether `key` is present (and not null), without reading it.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.map
            .and_then(|m| m.get(key))
            .is_some_and(|v| !v.is_null())
    }

    /// Reads `key` (absent and null read as none).
    pub(crate) fn take(&mut self, key: &str) -> Option<&'v Value> {
        let (k, v) = self.map?.get_key_value(key)?;
        self.used.push(k.as_str());
        (!v.is_null()).then_some(v)
    }

    /// A string field.
    pub(crate) fn str(&mut self, cx: &mut Ctx, key: &str) -> Option<String> {
        let v = self.take(key)?;
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                cx.error(
                    &self.at(key),
                    &shown(other),
                    format!("must be a string, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A string field that must be one of `options` (by name), as its value.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        cx: &mut Ctx,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let s = self.str(cx, key)?;
        if let Some((_, v)) = options.iter().find(|(n, _)| *n == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let allowed = match names.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        cx.error(
            &self.at(key),
            &format!("{s:?}"),
            format!("must be {allowed}"),
        );
        None
    }

    /// A whole number field within `min..=max`.
    pub(crate) fn int(&mut self, cx: &mut Ctx, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.take(key)?;
        match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                cx.error(
                    &self.at(key),
                    &shown(v),
                    format!("must be a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    /// A whole number field from 0 to `u32::MAX`.
    pub(crate) fn u32(&mut self, cx: &mut Ctx, key: &str) -> Option<u32> {
        self.int(cx, key, 0, i64::from(u32::MAX)).map(|n| n as u32)
    }

    /// A boolean field.
    pub(crate) fn bool(&mut self, cx: &mut Ctx, key: &str) -> Option<bool> {
        let v = self.take(key)?;
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                cx.error(&self.at(key), &shown(other), "must be true or false");
                None
            }
        }
    }

    /// A mapping of strings to strings (labels, data).
    pub(crate) fn str_map(&mut self, cx: &mut Ctx, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(v) = self.take(key) else {
            return out;
        };
        let path = self.at(key);
        let Value::Object(m) = v else {
            cx.error(
                &path,
                &shown(v),
                format!("must be a mapping of strings, not {}", type_name(v)),
            );
            return out;
        };
        for (k, v) in m {
            match v {
                Value::String(s) => {
                    out.insert(k.clone(), s.clone());
                }
                Value::Null => {
                    out.insert(k.clone(), String::new());
                }
                other => cx.error(
                    &format!("{path}[{k:?}]"),
                    &shown(other),
                    format!(
                        "must be a string, not {} (quote it: \"{}\")",
                        type_name(other),
                        other
                    ),
                ),
            }
        }
        out
    }

    /// A list of strings.
    pub(crate) fn str_list(&mut self, cx: &mut Ctx, key: &str) -> Vec<String> {
        let path = self.at(key);
        self.list(cx, key)
            .into_iter()
            .filter_map(|(p, v)| match v {
                Value::String(s) => Some(s.clone()),
                other => {
                    cx.error(
                        &p,
                        &shown(other),
                        format!(
                            "{path}: each item must be a string, not {}",
                            type_name(other)
                        ),
                    );
                    None
                }
            })
            .collect()
    }

    /// A list, each item with its path (`key[0]`).
    pub(crate) fn list(&mut self, cx: &mut Ctx, key: &str) -> Vec<(String, &'v Value)> {
        let Some(v) = self.take(key) else {
            return Vec::new();
        };
        let path = self.at(key);
        match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{path}[{i}]"), v))
                .collect(),
            other => {
                cx.error(
                    &path,
                    &shown(other),
                    format!("must be a list, not {}", type_name(other)),
                );
                Vec::new()
            }
        }
    }

    /// A nested mapping.
    pub(crate) fn obj(&mut self, cx: &mut Ctx, key: &str) -> Option<Fields<'v>> {
        let path = self.at(key);
        let v = self.take(key)?;
        Some(Fields::new(cx, v, &path))
    }

    /// Reads `key` if present and warns that `message` happens instead.
    pub(crate) fn ignore(&mut self, cx: &mut Ctx, key: &str, message: &str) {
        if self.take(key).is_some() {
            cx.warn(&self.at(key), message);
        }
    }

    /// [`Fields::ignore`] for each `(key, message)`.
    pub(crate) fn ignore_all(&mut self, cx: &mut Ctx, table: &[(&str, &str)]) {
        for (key, message) in table {
            self.ignore(cx, key, message);
        }
    }

    /// Marks `key` read without a warning (a field orch honours by doing nothing, such as a
    /// value equal to orch's behaviour).
    pub(crate) fn skip(&mut self, key: &str) {
        let _ = self.take(key);
    }

    /// The keys not read yet.
    pub(crate) fn rest(&self) -> Vec<String> {
        self.map
            .map(|m| {
                m.keys()
                    .filter(|k| !self.used.contains(&k.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Warns about every field not read: unknown to this converter, so not honoured.
    pub(crate) fn finish(self, cx: &mut Ctx) {
        let Some(map) = self.map else {
            return;
        };
        for k in map.keys() {
            if !self.used.contains(&k.as_str()) {
                cx.warn(
                    &self.at(k),
                    "unknown field: ignored (orch does not know it)",
                );
            }
        }
    }
}
