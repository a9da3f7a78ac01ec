//! Multi-document YAML and JSON manifests: parsing into objects, with every error naming the
//! source, the document, the field path, the bad value and what is allowed.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::object::{
    Config, Kind, Metadata, Object, Secret, Service, API_VERSION, DEFAULT_NAMESPACE,
};
use crate::model::validate::{validate, FieldError};

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

/// Something in a manifest that orch ignores, said so to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestWarning {
    /// The file (or `-`, or another name the caller gave).
    pub source: String,
    /// 1-based document index within the file.
    pub document: usize,
    /// The field, e.g. `status`.
    pub path: String,
    /// What happens to it.
    pub message: String,
}

impl fmt::Display for ManifestWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {}: {}: {}",
            self.source, self.document, self.path, self.message
        )
    }
}

/// The objects of one or more manifests, and what was ignored in them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    /// The valid objects, in order.
    pub objects: Vec<Object>,
    /// Fields that were ignored (those orch sets itself, such as `status`).
    pub warnings: Vec<ManifestWarning>,
}

/// Parses every document of one manifest (YAML, or JSON when it starts with `{` or `[`),
/// validates each object, and fills in the default namespace. Fields orch sets itself are
/// ignored; [`parse_with_warnings`] also says which.
pub fn parse(source: &str, text: &str) -> Result<Vec<Object>, ManifestErrors> {
    parse_with_warnings(source, text).map(|p| p.objects)
}

/// [`parse`], also returning a warning for each ignored field.
pub fn parse_with_warnings(source: &str, text: &str) -> Result<Parsed, ManifestErrors> {
    let docs = documents(source, text)?;
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
    let mut warnings = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let n = i + 1;
        let mut ignored = Vec::new();
        let decoded = decode_document(doc, &mut ignored);
        warnings.extend(ignored.into_iter().map(|path| ManifestWarning {
            source: source.into(),
            document: n,
            path,
            message: "ignored: set by orch, not by manifests".into(),
        }));
        match decoded {
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
        Ok(Parsed { objects, warnings })
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Parses several manifests as one all-or-nothing set: also rejects the same object twice.
pub fn parse_all<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Object>, ManifestErrors> {
    parse_all_with_warnings(sources).map(|p| p.objects)
}

/// [`parse_all`], also returning a warning for each ignored field.
pub fn parse_all_with_warnings<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Parsed, ManifestErrors> {
    let mut errors = Vec::new();
    let mut objects: Vec<(String, Object)> = Vec::new();
    let mut warnings = Vec::new();
    for (source, text) in sources {
        match parse_with_warnings(source, text) {
            Ok(p) => {
                objects.extend(p.objects.into_iter().map(|o| (source.to_string(), o)));
                warnings.extend(p.warnings);
            }
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
        Ok(Parsed {
            objects: objects.into_iter().map(|(_, o)| o).collect(),
            warnings,
        })
    } else {
        Err(ManifestErrors(errors))
    }
}

/// The documents of one manifest as JSON values (YAML, or JSON when it starts with `{` or
/// `[`; empty documents dropped; a JSON array or `List` flattened), with [`parse`]'s limits
/// and errors, numbered as [`parse`] numbers them: for importers of other formats
/// (Kubernetes, Compose) that read the same texts.
pub fn documents(source: &str, text: &str) -> Result<Vec<Value>, ManifestErrors> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestErrors::whole(
            source,
            format!("manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES} bytes (4 MiB) — split it into smaller files", text.len()),
        ));
    }
    parse_documents(source, text)
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
    let budget = yaml_budget(text.len());
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget.clone());
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| yaml_error(source, text, &e, &budget))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The most YAML nodes (scalars, sequences, mappings) a manifest may expand to: twice its
/// length (more than any YAML spells without aliases) plus some room, at most a million.
/// Aliases that expand past it are an alias bomb.
fn yaml_node_limit(len: usize) -> usize {
    len.saturating_mul(2).saturating_add(10_000).min(1_000_000)
}

/// The parser's limits for a manifest of `len` bytes: the documented document limit, nodes
/// by [`yaml_node_limit`], and the parser's defaults for the rest (aliases, depth, ...).
fn yaml_budget(len: usize) -> serde_saphyr::Budget {
    let mut b = serde_saphyr::Budget::default();
    b.max_documents = MAX_DOCUMENTS;
    b.max_nodes = yaml_node_limit(len);
    // Every node is an event, every collection also ends with one, and each document starts
    // and ends with one.
    b.max_events = b.max_nodes * 2 + MAX_DOCUMENTS * 2 + 16;
    b
}

/// A parser error as one line: `line L column C: what`, without the source snippet, with
/// resource limits and duplicate keys explained in orch's words.
fn yaml_error(
    source: &str,
    text: &str,
    e: &serde_saphyr::Error,
    budget: &serde_saphyr::Budget,
) -> ManifestErrors {
    use serde_saphyr::budget::BudgetBreach;
    use serde_saphyr::Error;
    let mut inner = e;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let at = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| format!("line {} column {}: ", l.line(), l.column()))
        .unwrap_or_default();
    let what = match inner {
        Error::Budget {
            breach: BudgetBreach::Documents { .. },
            ..
        } => {
            return ManifestErrors::whole(
                source,
                format!("manifest has more than {MAX_DOCUMENTS} documents; the limit is {MAX_DOCUMENTS} — split it into smaller files"),
            )
        }
        Error::Budget { breach, .. } => budget_message(breach, budget, text.len()),
        Error::DuplicateMappingKey { key, location } => {
            let first = key
                .as_deref()
                .and_then(|k| first_occurrence(text, k, location.line(), location.column()));
            format!(
                "duplicate key{}{}: a key may appear only once in a mapping",
                key.as_deref()
                    .map(|k| format!(" {k:?}"))
                    .unwrap_or_default(),
                first
                    .map(|(l, c)| format!(" (first at line {l} column {c})"))
                    .unwrap_or_default()
            )
        }
        _ => {
            let s = e.to_string();
            let first = s
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown error");
            return ManifestErrors::whole(
                source,
                format!(
                    "invalid YAML: {}",
                    first.strip_prefix("error: ").unwrap_or(first)
                ),
            );
        }
    };
    ManifestErrors::whole(source, format!("invalid YAML: {at}{what}"))
}

/// Which of the parser's limits was hit, and what the limit is.
fn budget_message(
    breach: &serde_saphyr::budget::BudgetBreach,
    b: &serde_saphyr::Budget,
    len: usize,
) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let bomb = "as a YAML alias bomb does; the limit protects the daemon";
    match breach {
        B::Nodes { .. } => format!(
            "too many nodes or aliases: the document expands to more than {} nodes, the limit for a manifest of {len} bytes ({bomb})",
            b.max_nodes
        ),
        B::Events { .. } => format!(
            "too many nodes or aliases: the document expands to more than {} parser events, the limit for a manifest of {len} bytes ({bomb})",
            b.max_events
        ),
        B::Aliases { .. } => format!(
            "more than {} aliases; the limit is {} ({bomb})",
            b.max_aliases, b.max_aliases
        ),
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "{aliases} aliases for {anchors} anchor{}: the limit is {} per anchor ({bomb})",
            if *anchors == 1 { "" } else { "s" },
            b.alias_anchor_ratio_multiplier
        ),
        B::Anchors { .. } => format!(
            "more than {} anchors; the limit is {}",
            b.max_anchors, b.max_anchors
        ),
        B::RecordedAnchorEvents { .. } | B::RecordedAnchorBytes { .. } => format!(
            "anchored content is copied too often: more than {} copied events or {} bytes, the limit ({bomb})",
            b.max_recorded_anchor_events, b.max_recorded_anchor_bytes
        ),
        B::Depth { .. } => format!(
            "nested more than {} levels deep; the limit is {}",
            b.max_depth, b.max_depth
        ),
        B::ScalarBytes { .. } => format!(
            "more than {} bytes of scalar text; the limit is {}",
            b.max_total_scalar_bytes, b.max_total_scalar_bytes
        ),
        B::MergeKeys { .. } => format!(
            "more than {} merge keys (<<); the limit is {}",
            b.max_merge_keys, b.max_merge_keys
        ),
        B::Documents { .. } => format!("more than {MAX_DOCUMENTS} documents; the limit is {MAX_DOCUMENTS}"),
        other => format!("a YAML parser limit was reached ({other:?})"),
    }
}

/// Where `key` first appears in the mapping in which it appears again at `line`, `column`
/// (1-based, as the parser reports them): `(line, column)`, 1-based. Scans the parser's events
/// again, which only happens for a manifest that is being refused.
fn first_occurrence(text: &str, key: &str, line: u64, column: u64) -> Option<(usize, usize)> {
    use serde_saphyr::granit_parser::{Event, Parser};
    use std::collections::HashMap;
    enum Frame<'a> {
        Seq,
        Map {
            expecting_key: bool,
            keys: HashMap<std::borrow::Cow<'a, str>, (usize, usize)>,
        },
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut fallback = None;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.ok()?;
        let here = (span.start.line(), span.start.col() + 1);
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(..)
        );
        if is_node {
            if let Some(Frame::Map {
                expecting_key,
                keys,
            }) = stack.last_mut()
            {
                if *expecting_key {
                    if let Event::Scalar(k, ..) = &event {
                        match keys.get(k) {
                            Some(&first) if k == key => {
                                if here == (line as usize, column as usize) {
                                    return Some(first);
                                }
                                fallback = fallback.or(Some(first));
                            }
                            Some(_) => {}
                            None => {
                                keys.insert(k.clone(), here);
                            }
                        }
                    }
                }
                *expecting_key = !*expecting_key;
            }
        }
        match event {
            Event::SequenceStart(..) => stack.push(Frame::Seq),
            Event::MappingStart(..) => stack.push(Frame::Map {
                expecting_key: true,
                keys: HashMap::new(),
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
            }
            Event::DocumentStart(..) => stack.clear(),
            _ => {}
        }
    }
    fallback
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

/// The fields orch sets itself: ignored on input (as kubectl apply ignores `status`).
const SERVER_SET_METADATA: [&str; 4] = ["uid", "revision", "generation", "creationTimestamp"];

/// Turns one parsed document into an object (kind dispatch, typed decode, default namespace).
/// Fields orch sets itself (`status`, `metadata.uid`, `revision`, `generation`,
/// `creationTimestamp`) are dropped, and their paths noted in `ignored`.
fn decode_document(mut doc: Value, ignored: &mut Vec<String>) -> Result<Object, FieldError> {
    if let Value::Object(map) = &mut doc {
        if let Some(Value::Object(md)) = map.get_mut("metadata") {
            for field in SERVER_SET_METADATA {
                if md.remove(field).is_some() {
                    ignored.push(format!("metadata.{field}"));
                }
            }
        }
        if map.remove("status").is_some() {
            ignored.push("status".into());
        }
    }
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
        Kind::Job => Object::Job(Box::new(typed::<crate::model::object::Job>(v)?)),
        Kind::Route => Object::Route(Box::new(typed::<crate::model::object::Route>(v)?)),
        Kind::CronJob => Object::CronJob(Box::new(typed::<crate::model::object::CronJob>(v)?)),
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
    documents_yaml(objs.iter().map(Object::to_display_value))
}

/// Values as multi-document YAML.
fn documents_yaml(values: impl Iterator<Item = Value>) -> String {
    let mut out = String::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(&v).unwrap_or_default());
    }
    out
}

/// Renders objects as multi-document YAML manifests to apply: [`to_yaml`] without the fields
/// orch sets itself (`status`, `metadata.uid`, ...), so applying them warns about nothing.
/// What `orchctl convert` prints and what an importer sends.
pub fn to_manifest_yaml(objs: &[Object]) -> String {
    documents_yaml(objs.iter().map(|o| {
        let mut v = o.to_display_value();
        if let Value::Object(map) = &mut v {
            map.remove("status");
            if let Some(Value::Object(md)) = map.get_mut("metadata") {
                for field in SERVER_SET_METADATA {
                    md.remove(field);
                }
            }
        }
        v
    }))
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

#[cfg(test)]
mod image_only_tests {
    #[test]
    fn image_settings_on_a_command_template_are_named() {
        let yaml = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: 1\n  template:\n    command: [server]\n    imagePullPolicy: Always\n    readOnlyRootFilesystem: true\n";
        let e = crate::model::manifest::parse("web.yaml", yaml)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.template.imagePullPolicy") && e.contains("images only"),
            "{e}"
        );
        assert!(e.contains("spec.template.readOnlyRootFilesystem"), "{e}");
        let bad = yaml
            .replace("command: [server]", "image: busybox")
            .replace("Always", "Sometimes");
        let e = crate::model::manifest::parse("web.yaml", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Sometimes") && e.contains("IfNotPresent"), "{e}");
    }
}
