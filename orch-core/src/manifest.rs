//! Multi-document YAML and JSON manifests: parsing into objects, with every error naming the
//! source, the document, the field path, the bad value and what is allowed.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::object::{
    Config, Kind, Metadata, Object, Secret, Service, API_VERSION, DEFAULT_NAMESPACE,
};
use crate::validate::{validate, FieldError};

/// The largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The most documents one manifest may hold.
pub const MAX_DOCUMENTS: usize = 10_000;

/// One problem in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file (or `-`, or another name the caller gave).
    pub source: String,
    /// 1-based document index within the file, when the problem is in one document.
    pub document: Option<usize>,
    /// The field, when the problem is in one field.
    pub field: Option<FieldError>,
    /// The message when no single field is at fault.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        match &self.field {
            Some(fe) => write!(f, ": {fe}"),
            None => write!(f, ": {}", self.message),
        }
    }
}

/// Every problem found in a set of manifests. Nothing is applied when there is any.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ManifestErrors {
    /// One error not tied to a document.
    pub fn whole(source: &str, message: impl Into<String>) -> ManifestErrors {
        ManifestErrors(vec![ManifestError {
            source: source.into(),
            document: None,
            field: None,
            message: message.into(),
        }])
    }
}

/// Parses every document of one manifest (YAML, or JSON when it starts with `{` or `[`),
/// validates each object, and fills in the default namespace.
pub fn parse(source: &str, text: &str) -> Result<Vec<Object>, ManifestErrors> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestErrors::whole(
            source,
            format!("manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES} bytes (4 MiB) — split it into smaller files", text.len()),
        ));
    }
    let docs = parse_documents(source, text)?;
    if docs.len() > MAX_DOCUMENTS {
        return Err(ManifestErrors::whole(
            source,
            format!(
                "manifest has {} documents; the limit is {MAX_DOCUMENTS}",
                docs.len()
            ),
        ));
    }
    let mut errors = Vec::new();
    let mut objects = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let n = i + 1;
        match object_from_value(doc) {
            Ok(obj) => {
                let problems = validate(&obj);
                if problems.is_empty() {
                    objects.push(obj);
                }
                errors.extend(problems.into_iter().map(|fe| ManifestError {
                    source: source.into(),
                    document: Some(n),
                    field: Some(fe),
                    message: String::new(),
                }));
            }
            Err(fe) => errors.push(ManifestError {
                source: source.into(),
                document: Some(n),
                field: Some(fe),
                message: String::new(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Parses several manifests as one all-or-nothing set: also rejects the same object twice.
pub fn parse_all<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Object>, ManifestErrors> {
    let mut errors = Vec::new();
    let mut objects: Vec<(String, Object)> = Vec::new();
    for (source, text) in sources {
        match parse(source, text) {
            Ok(objs) => objects.extend(objs.into_iter().map(|o| (source.to_string(), o))),
            Err(ManifestErrors(e)) => errors.extend(e),
        }
    }
    let mut seen = std::collections::HashMap::new();
    for (source, o) in &objects {
        if let Some(first) = seen.insert(o.key(), source.clone()) {
            errors.push(ManifestError {
                source: source.clone(),
                document: None,
                field: None,
                message: format!(
                    "{} in namespace {:?} is defined twice (also in {first})",
                    o.display_name(),
                    o.metadata().namespace
                ),
            });
        }
    }
    if errors.is_empty() {
        Ok(objects.into_iter().map(|(_, o)| o).collect())
    } else {
        Err(ManifestErrors(errors))
    }
}

fn parse_documents(source: &str, text: &str) -> Result<Vec<Value>, ManifestErrors> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ManifestErrors::whole(source, format!("invalid JSON: {e}")))?;
        return Ok(match v {
            Value::Array(items) => items,
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => m
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            other => vec![other],
        });
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        ManifestErrors::whole(
            source,
            format!("invalid YAML: {}", yaml_message(&e.to_string())),
        )
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The parser's first line (`line L column C: what`) without its source snippet; resource
/// limits (alias bombs, huge documents) get a plain explanation.
fn yaml_message(s: &str) -> String {
    let first = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    if first.contains("budget breached") {
        format!("{first} (the document expands to too many nodes or aliases, as a YAML alias bomb does; the limit protects the daemon)")
    } else {
        first.to_string()
    }
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        FieldError {
            path: if path == "." {
                "(document)".into()
            } else {
                path
            },
            value: String::new(),
            message: inner,
        }
    })
}

/// Turns one parsed document into an object (kind dispatch, typed decode, default namespace).
pub fn object_from_value(doc: Value) -> Result<Object, FieldError> {
    let Value::Object(mut map) = doc else {
        return Err(FieldError {
            path: "(document)".into(),
            value: short(&doc),
            message:
                "a manifest document must be a mapping with apiVersion, kind, metadata and spec"
                    .into(),
        });
    };
    match map.remove("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => {
            return Err(FieldError {
                path: "apiVersion".into(),
                value: short(&v),
                message: format!("must be {API_VERSION:?}"),
            })
        }
        None => {
            return Err(FieldError {
                path: "apiVersion".into(),
                value: String::new(),
                message: format!("missing; must be {API_VERSION:?}"),
            })
        }
    }
    let allowed = Kind::APPLICABLE
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let kind = match map.remove("kind") {
        Some(Value::String(k)) => match Kind::APPLICABLE.iter().find(|a| a.as_str() == k) {
            Some(k) => *k,
            None => {
                let hint = match k.as_str() {
                    "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Pod" => {
                        " (orch runs these as kind: Service)"
                    }
                    "ConfigMap" => " (orch calls it kind: Config)",
                    _ => "",
                };
                return Err(FieldError {
                    path: "kind".into(),
                    value: format!("{k:?}"),
                    message: format!("unknown kind; allowed: {allowed}{hint}"),
                });
            }
        },
        Some(v) => {
            return Err(FieldError {
                path: "kind".into(),
                value: short(&v),
                message: format!("must be a string; allowed: {allowed}"),
            })
        }
        None => {
            return Err(FieldError {
                path: "kind".into(),
                value: String::new(),
                message: format!("missing; allowed: {allowed}"),
            })
        }
    };
    let v = Value::Object(map);
    let mut obj: Object = match kind {
        Kind::Service => Object::from(typed::<Service>(v)?),
        Kind::Secret => Object::Secret(typed::<Secret>(v)?),
        Kind::Config => Object::Config(typed::<Config>(v)?),
        Kind::Job => Object::Job(Box::new(typed::<crate::object::Job>(v)?)),
        _ => unreachable!("only applicable kinds are matched above"),
    };
    let md: &mut Metadata = obj.metadata_mut();
    if md.namespace.is_empty() && kind.namespaced() {
        md.namespace = DEFAULT_NAMESPACE.into();
    }
    Ok(obj)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 77)
                .last()
                .map(|(i, c)| i + c.len_utf8())
                .unwrap_or(0)]
        )
    } else {
        s
    }
}

/// Renders objects as multi-document YAML (for `-o yaml`).
pub fn to_yaml(objs: &[Object]) -> String {
    let mut out = String::new();
    for (i, o) in objs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(&o.to_display_value()).unwrap_or_default());
    }
    out
}

/// The namespace each document of `text` names (`None` where it names none), in the order
/// [`parse`] returns their objects: for a caller whose default namespace is not `default`
/// (`orchctl -n`), which must tell a namespace left out from one written.
pub fn named_namespaces(source: &str, text: &str) -> Result<Vec<Option<String>>, ManifestErrors> {
    Ok(parse_documents(source, text)?
        .iter()
        .map(|d| {
            d.get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .map(str::to_string)
        })
        .collect())
}
