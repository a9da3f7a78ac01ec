//! The conversion's context (warnings and errors, with the file's name) and a mapping that
//! remembers which keys were read, so that every key left unread becomes a warning.

use std::cell::RefCell;
use std::collections::BTreeSet;

use orch_core::model::manifest::{ManifestError, ManifestWarning};
use orch_core::model::validate::FieldError;
use serde_json::{Map, Value};

/// Where the conversion writes what it finds.
pub(crate) struct Ctx {
    pub(crate) source: String,
    pub(crate) warnings: Vec<ManifestWarning>,
    pub(crate) errors: Vec<ManifestError>,
}

impl Ctx {
    pub(crate) fn new(source: &str) -> Ctx {
        Ctx {
            source: source.to_string(),
            warnings: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A field not honoured (or honoured differently): what orch does instead.
    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ManifestWarning {
            source: self.source.clone(),
            document: 1,
            path: path.into(),
            message: message.into(),
        });
    }

    /// A field that cannot be converted: `value` as written (may be empty) and why.
    pub(crate) fn error(
        &mut self,
        path: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ManifestError {
            source: self.source.clone(),
            document: Some(1),
            field: Some(FieldError {
                path: path.into(),
                value: value.into(),
                message: message.into(),
            }),
            message: String::new(),
        });
    }
}

/// A mapping of the Compose file at `path`, recording the keys read.
pub(crate) struct Fields<'a> {
    pub(crate) path: String,
    map: &'a Map<String, Value>,
    used: RefCell<BTreeSet<&'a str>>,
}

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

impl<'a> Fields<'a> {
    /// `value` as a mapping (`null` is an empty one); anything else is an error (and an
    /// empty mapping).
    pub(crate) fn of(ctx: &mut Ctx, path: impl Into<String>, value: &'a Value) -> Fields<'a> {
        let path = path.into();
        let map = match value {
            Value::Object(m) => m,
            Value::Null => EMPTY.get_or_init(Map::new),
            other => {
                ctx.error(&path, show(other), "must be a mapping");
                EMPTY.get_or_init(Map::new)
            }
        };
        Fields {
            path,
            map,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// The path of key `k`.
    pub(crate) fn at(&self, k: &str) -> String {
        join(&self.path, k)
    }

    /// Key `k`'s value (a `null` counts as absent), marked as read.
    pub(crate) fn get(&self, k: &str) -> Option<&'a Value> {
        let (key, v) = self.map.get_key_value(k)?;
        self.used.borrow_mut().insert(key.as_str());
        (!v.is_null()).then_some(v)
    }

    /// Marks `k` read without using it.
    pub(crate) fn skip(&self, k: &str) {
        let _ = self.get(k);
    }

    /// Whether `k` is present (not marking it).
    pub(crate) fn has(&self, k: &str) -> bool {
        self.map.get(k).is_some_and(|v| !v.is_null())
    }

    /// Key `k` as a string (numbers and booleans as written); other types are an error.
    pub(crate) fn str(&self, ctx: &mut Ctx, k: &str) -> Option<String> {
        let v = self.get(k)?;
        scalar(ctx, &self.at(k), v)
    }

    /// Key `k` as a boolean (`true`/`false`, or the strings `"true"`/`"false"`).
    pub(crate) fn bool(&self, ctx: &mut Ctx, k: &str) -> Option<bool> {
        let v = self.get(k)?;
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            other => {
                ctx.error(self.at(k), show(other), "must be true or false");
                None
            }
        }
    }

    /// Key `k` as a whole number in `0..=max`.
    pub(crate) fn uint(&self, ctx: &mut Ctx, k: &str, max: u64) -> Option<u64> {
        let v = self.get(k)?;
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n <= max => Some(n),
            _ => {
                ctx.error(
                    self.at(k),
                    show(v),
                    format!("must be a whole number from 0 to {max}"),
                );
                None
            }
        }
    }

    /// Key `k` as a list of strings (a single string is a list of one).
    pub(crate) fn strings(&self, ctx: &mut Ctx, k: &str) -> Vec<String> {
        match self.get(k) {
            None => Vec::new(),
            Some(v) => strings(ctx, &self.at(k), v),
        }
    }

    /// Every key present and never read, with its path (extension keys `x-*` excluded).
    pub(crate) fn unread(&self) -> Vec<(String, String)> {
        let used = self.used.borrow();
        self.map
            .iter()
            .filter(|(k, v)| !used.contains(k.as_str()) && !k.starts_with("x-") && !v.is_null())
            .map(|(k, _)| (k.clone(), self.at(k)))
            .collect()
    }

    /// A warning for every key left unread: orch ignores it.
    pub(crate) fn finish(&self, ctx: &mut Ctx) {
        for (_, path) in self.unread() {
            ctx.warn(path, "not supported by orch: ignored");
        }
    }
}

/// `parent.key`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A value as written, for messages.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A scalar as a string (numbers and booleans as written); lists and mappings are an error.
pub(crate) fn scalar(ctx: &mut Ctx, path: &str, v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => None,
        other => {
            ctx.error(path, show(other), "must be a string");
            None
        }
    }
}

/// A list of strings (a single string is a list of one).
pub(crate) fn strings(ctx: &mut Ctx, path: &str, v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, x)| scalar(ctx, &format!("{path}[{i}]"), x))
            .collect(),
        other => scalar(ctx, path, other).into_iter().collect(),
    }
}

/// Compose's `list_or_dict` (`["K=V", "K"]` or `{K: V}`) as pairs; a value of `None` is a key
/// given without one.
pub(crate) fn list_or_dict(ctx: &mut Ctx, path: &str, v: &Value) -> Vec<(String, Option<String>)> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, x)| scalar(ctx, &format!("{path}[{i}]"), x))
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (s, None),
            })
            .collect(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let val = if v.is_null() {
                    None
                } else {
                    scalar(ctx, &join(path, k), v)
                };
                (k.clone(), val)
            })
            .collect(),
        Value::Null => Vec::new(),
        other => {
            ctx.error(
                path,
                show(other),
                "must be a list of KEY=VALUE or a mapping",
            );
            Vec::new()
        }
    }
}
