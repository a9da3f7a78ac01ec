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
    let docs = documents(source, text)?;
    let converted = if is_compose(&docs) {
        compose::convert(source, text, options)?
    } else {
        manifests(source, text, &docs, options)?
    };
    checked(converted, options)
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

/// orch and Kubernetes documents, each converted by its own parser and put back in document
/// order, with the documents numbered as they are in `text`.
fn manifests(
    source: &str,
    text: &str,
    docs: &[Value],
    options: &Options,
) -> Result<Converted, ManifestErrors> {
    let (kube_docs, orch_docs): (Vec<usize>, Vec<usize>) =
        (0..docs.len()).partition(|&i| is_kube(&docs[i]));
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    for &i in &orch_docs {
        let n = i + 1;
        match orch_document(source, &docs[i], options) {
            Ok(c) => parts.push(renumbered(c, |_| n)),
            Err(e) => errors.extend(renumbered_errors(e, |_| n).0),
        }
    }
    if !kube_docs.is_empty() {
        // A file of Kubernetes documents only goes as it is (so positions in it stay right);
        // mixed with orch documents, the Kubernetes ones go as a text of their own, numbered
        // back afterwards.
        let number = |d: usize| kube_docs.get(d.wrapping_sub(1)).map_or(d, |i| i + 1);
        let result = if orch_docs.is_empty() {
            kube::convert(source, text, options)
        } else {
            kube::convert(source, &yaml_documents(&kube_docs, docs), options)
                .map(|c| renumbered(c, number))
                .map_err(|e| renumbered_errors(e, number))
        };
        match result {
            Ok(c) => parts.push(c),
            Err(e) => errors.extend(e.0),
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.document);
        return Err(ManifestErrors(errors));
    }
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    for c in parts {
        items.extend(c.objects.into_iter().zip(c.origins));
        warnings.extend(c.warnings);
    }
    // Stable: within a document, the order its parser gave.
    items.sort_by_key(|(_, origin)| origin.document);
    warnings.sort_by_key(|w| w.document);
    let (objects, origins) = items.into_iter().unzip();
    Ok(Converted {
        objects,
        origins,
        warnings,
    })
}

/// The documents `which` of `docs` as one multi-document YAML text.
fn yaml_documents(which: &[usize], docs: &[Value]) -> String {
    which
        .iter()
        .map(|&i| serde_saphyr::to_string(&docs[i]).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
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
