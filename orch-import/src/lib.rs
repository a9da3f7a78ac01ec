//! Existing applications as orch objects: Kubernetes manifests ([`kube`]) and Compose files
//! ([`compose`]), each converted to the orch objects it means plus a [`Warning`] for every field
//! orch does not honour (naming the file, the document, the field path and what orch does
//! instead). Nothing here does I/O except reading the files a Compose file names (`env_file`,
//! file secrets and configs), relative to [`Options::base_dir`].
//!
//! ```
//! let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]\n";
//! let out = orch_import::convert("web.yaml", text, &orch_import::Options::default()).unwrap();
//! assert_eq!(out.objects[0].metadata().name, "web");
//! ```

use std::path::PathBuf;

use orch_core::model::manifest::{self, documents, ManifestError, ManifestErrors, ManifestWarning};
use orch_core::model::object::API_VERSION;
use orch_core::model::validate::{validate, FieldError};
use orch_core::Object;
use serde_json::Value;

pub mod compose;
pub mod kube;

/// A field orch does not honour, said so: `source` (file), `document` (1-based), `path`
/// (`spec.template.spec.containers[0].lifecycle`) and what orch does instead.
pub type Warning = ManifestWarning;

/// What a text is, as [`detect`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// orch's own manifests (`apiVersion: orch/v1`).
    Orch,
    /// Kubernetes manifests (`apiVersion: v1`, `apps/v1`, `batch/v1`, ...).
    Kubernetes,
    /// A Compose file (a mapping with `services:` and no `apiVersion`).
    Compose,
}

/// How to convert.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The namespace for objects that name none (Kubernetes: `metadata.namespace` wins; an
    /// orch manifest's own namespace wins too). Default: `default`.
    pub namespace: Option<String>,
    /// Compose: the project name (the namespace everything lands in, and the
    /// `orch.dev/compose-project` label). Default: the Compose file's `name:`, else the name of
    /// [`Options::base_dir`], else `default`.
    pub project: Option<String>,
    /// Compose: the directory relative paths (`env_file`, secret and config `file:`, bind
    /// mounts) are resolved against; without it such references are errors.
    pub base_dir: Option<PathBuf>,
    /// Make every warning an error.
    pub strict: bool,
}

/// The orch objects a text becomes.
#[derive(Clone, Debug, Default)]
pub struct Converted {
    /// The objects, in a stable order (the order of the documents; within one document, the
    /// order it maps to).
    pub objects: Vec<Object>,
    /// Where each object came from (parallel to `objects`).
    pub origins: Vec<Origin>,
    /// Every field not honoured, in document order.
    pub warnings: Vec<Warning>,
}

/// The document an object came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file (or `-`).
    pub source: String,
    /// 1-based document number (Compose: 1).
    pub document: usize,
    /// What it was there: `Deployment/web`, `service redis` (Compose).
    pub what: String,
}

/// The label every object of a Compose project carries, with the project's name.
pub const COMPOSE_PROJECT_LABEL: &str = "orch.dev/compose-project";
/// The label every object converted from a Kubernetes manifest carries, with its kind
/// (`Deployment`, `StatefulSet`, ...).
pub const KUBE_KIND_LABEL: &str = "orch.dev/kube-kind";

/// What `text` is: Compose when it is one mapping with a `services` key and no `apiVersion`;
/// Kubernetes when any document's `apiVersion` is not `orch/v1`; else orch (also for a text
/// that does not parse: orch's parser then says why).
pub fn detect(text: &str) -> Format {
    match documents("", text) {
        Ok(docs) if is_compose(&docs) => Format::Compose,
        Ok(docs) if docs.iter().any(is_kube) => Format::Kubernetes,
        _ => Format::Orch,
    }
}

/// Converts `text` (read from `source`) whatever its [`Format`]: orch manifests are parsed as
/// they are (and may be mixed with Kubernetes documents in one file), Kubernetes manifests
/// through [`kube::convert`], a Compose file through [`compose::convert`]. Every object is
/// validated; an error names the file, the document and the field. With
/// [`Options::strict`], any warning is an error.
pub fn convert(source: &str, text: &str, options: &Options) -> Result<Converted, ManifestErrors> {
    convert_all(&[(source, text)], options)
}

/// [`convert`] over several files as one input (`orchctl apply -f DIR`): Kubernetes
/// Services' selectors are checked against the pod templates of every file and a name defined
/// twice is an error ([`kube::convert_documents`]); each Compose file is converted on its own
/// (with `options`, so its [`Options::base_dir`]). Objects come in file order, then document
/// order. Any error in any file and nothing is returned.
pub fn convert_all(files: &[(&str, &str)], options: &Options) -> Result<Converted, ManifestErrors> {
    let mut errors = Vec::new();
    let mut parts = Vec::new();
    let mut manifests = Vec::new();
    for (source, text) in files {
        match documents(source, text) {
            Ok(docs) if is_compose(&docs) => match compose::convert(source, text, options) {
                Ok(c) => parts.push(c),
                Err(e) => errors.extend(e.0),
            },
            Ok(docs) => manifests.push((*source, docs)),
            Err(e) => errors.extend(e.0),
        }
    }
    match self::manifests(&manifests, options) {
        Ok(c) => parts.push(c),
        Err(e) => errors.extend(e.0),
    }
    if !errors.is_empty() {
        return Err(ManifestErrors(errors));
    }
    checked(in_file_order(files, parts), options)
}

/// A Compose file: one mapping with `services` and no `apiVersion`.
fn is_compose(docs: &[Value]) -> bool {
    matches!(docs, [Value::Object(m)] if m.contains_key("services") && !m.contains_key("apiVersion"))
}

/// A document with an `apiVersion` that is not orch's. (One with none is left to orch's
/// parser, which says that it is missing.)
fn is_kube(doc: &Value) -> bool {
    doc.get("apiVersion")
        .is_some_and(|v| v.as_str() != Some(API_VERSION))
}

/// The orch and Kubernetes documents of `files`, each converted by its own parser, numbered
/// as they are in their file; the Kubernetes ones of every file as one input.
fn manifests(files: &[(&str, Vec<Value>)], options: &Options) -> Result<Converted, ManifestErrors> {
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    let mut kube_docs = Vec::new();
    for (source, docs) in files {
        let mut theirs = Vec::new();
        for (i, doc) in docs.iter().enumerate() {
            let n = i + 1;
            if is_kube(doc) {
                theirs.push((n, doc.clone()));
                continue;
            }
            match orch_document(source, doc, options) {
                Ok(c) => parts.push(renumbered(c, |_| n)),
                Err(e) => errors.extend(renumbered_errors(e, |_| n).0),
            }
        }
        if !theirs.is_empty() {
            kube_docs.push((*source, theirs));
        }
    }
    if !kube_docs.is_empty() {
        match kube::convert_documents(&kube_docs, options) {
            Ok(c) => parts.push(c),
            Err(e) => errors.extend(e.0),
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.document);
        return Err(ManifestErrors(errors));
    }
    Ok(parts.into_iter().fold(Converted::default(), |mut all, c| {
        all.objects.extend(c.objects);
        all.origins.extend(c.origins);
        all.warnings.extend(c.warnings);
        all
    }))
}

/// `parts` as one, ordered by file (as in `files`), then document; stable, so within a
/// document the order its converter gave.
fn in_file_order(files: &[(&str, &str)], parts: Vec<Converted>) -> Converted {
    let file = |source: &str| files.iter().position(|(s, _)| *s == source);
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    for c in parts {
        items.extend(c.objects.into_iter().zip(c.origins));
        warnings.extend(c.warnings);
    }
    items.sort_by_key(|(_, o)| (file(&o.source), o.document));
    warnings.sort_by_key(|w| (file(&w.source), w.document));
    let (objects, origins) = items.into_iter().unzip();
    Converted {
        objects,
        origins,
        warnings,
    }
}

/// One orch document (numbered 1 here), in `options.namespace` when it names none.
fn orch_document(
    source: &str,
    doc: &Value,
    options: &Options,
) -> Result<Converted, ManifestErrors> {
    let text = serde_json::to_string(doc).unwrap_or_default();
    let parsed = manifest::parse_with_warnings(source, &text)?;
    let names_one = doc
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .is_some_and(|ns| !ns.is_empty());
    let mut objects = parsed.objects;
    if let (false, Some(ns)) = (names_one, &options.namespace) {
        for o in objects.iter_mut().filter(|o| o.kind().namespaced()) {
            o.metadata_mut().namespace = ns.clone();
        }
    }
    let origins = objects
        .iter()
        .map(|o| Origin {
            source: source.to_string(),
            document: 1,
            what: format!("{}/{}", o.kind().as_str(), o.metadata().name),
        })
        .collect();
    Ok(Converted {
        objects,
        origins,
        warnings: parsed.warnings,
    })
}

/// `c` with its document numbers mapped by `number`.
fn renumbered(mut c: Converted, number: impl Fn(usize) -> usize) -> Converted {
    for o in &mut c.origins {
        o.document = number(o.document);
    }
    for w in &mut c.warnings {
        w.document = number(w.document);
    }
    c
}

/// `e` with its document numbers mapped by `number`.
fn renumbered_errors(mut e: ManifestErrors, number: impl Fn(usize) -> usize) -> ManifestErrors {
    for e in &mut e.0 {
        e.document = e.document.map(&number);
    }
    e
}

/// Every object validated (an error names the document it came from and what it was there),
/// and with [`Options::strict`] every warning an error.
fn checked(c: Converted, options: &Options) -> Result<Converted, ManifestErrors> {
    let mut errors = Vec::new();
    for (o, origin) in c.objects.iter().zip(&c.origins) {
        for fe in validate(o) {
            errors.push(ManifestError {
                source: origin.source.clone(),
                document: Some(origin.document),
                field: None,
                message: format!("{} (as orch {}): {fe}", origin.what, o.display_name()),
            });
        }
    }
    if options.strict {
        errors.extend(c.warnings.iter().map(|w| ManifestError {
            source: w.source.clone(),
            document: Some(w.document),
            field: Some(FieldError {
                path: w.path.clone(),
                value: String::new(),
                message: format!("{} (strict: every warning is an error)", w.message),
            }),
            message: String::new(),
        }));
    }
    if errors.is_empty() {
        Ok(c)
    } else {
        errors.sort_by_key(|e| e.document);
        Err(ManifestErrors(errors))
    }
}
