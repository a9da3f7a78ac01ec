//! Kubernetes manifests as orch objects. The mapping, field by field, is in
//! `orch-import/KUBERNETES.md` (linked from the README's mapping table):
//!
//! - Deployment, ReplicationController → Service (`headless: true`: virtual IPs belong to
//!   routes); StatefulSet → Service `mode: ordered` with per-replica volumes from its
//!   `volumeClaimTemplates`; DaemonSet → Service `mode: global`.
//! - Job → Job; CronJob → CronJob (`jobTemplate.spec` → `spec.job`).
//! - Service → Route; ConfigMap → Config; Secret → Secret (`data` base64-decoded).
//! - Namespace, ServiceAccount, PersistentVolumeClaim → no object, a warning.
//!
//! Every object carries the label [`crate::KUBE_KIND_LABEL`] naming the kind it came from.
//! Every field orch does not honour, and every field it does not know, is a [`Warning`].

mod fields;
mod other;
mod pod;
mod workloads;

use std::collections::HashMap;

use orch_core::model::manifest::{
    ManifestError, ManifestErrors, MAX_DOCUMENTS, MAX_MANIFEST_BYTES,
};
use orch_core::model::object::{
    Kind, LabelSelector, Metadata, Object, ProbePort, DEFAULT_NAMESPACE,
};
use orch_core::model::validate::{dns1123_label, validate, FieldError};
use serde_json::Value;

use fields::{Ctx, Fields};
use workloads::{Templates, Workload};

use crate::{Converted, Options, Origin, Warning, KUBE_KIND_LABEL};

/// The kinds converted, with their API versions.
pub const SUPPORTED: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ReplicationController"),
    ("v1", "List"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
];

fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|(a, k)| format!("{a} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fields of `metadata` set by a cluster, not by manifests.
const METADATA_IGNORED: &[(&str, &str)] = &[
    ("uid", "ignored: set by the cluster"),
    ("resourceVersion", "ignored: set by the cluster"),
    ("generation", "ignored: set by the cluster"),
    ("creationTimestamp", "ignored: set by the cluster"),
    ("deletionTimestamp", "ignored: set by the cluster"),
    ("deletionGracePeriodSeconds", "ignored: set by the cluster"),
    ("selfLink", "ignored: set by the cluster"),
    ("managedFields", "ignored: set by the cluster"),
    (
        "ownerReferences",
        "ignored: orch objects are not owned by other objects",
    ),
    ("finalizers", "ignored: orch deletes objects at once"),
    ("generateName", "ignored: metadata.name is used"),
];

/// What one converted object still needs checked against the whole input.
enum Check {
    /// A route's selector must match some pod template.
    Selector(LabelSelector),
    /// A StatefulSet's `serviceName` should be a Service of the input.
    Governing(String),
    None,
}

struct Produced {
    object: Object,
    origin: Origin,
    check: Check,
    /// The path prefix of the document's object (`items[2].` in a List).
    prefix: String,
    /// The pod template's path in the source, for validation errors.
    template_path: &'static str,
}

/// Converts a text of Kubernetes documents (YAML or JSON, `---`-separated; `List` kinds
/// flattened) to orch objects and warnings. Documents with `apiVersion: orch/v1` are left to
/// the caller ([`crate::convert`]); here they are an error.
pub fn convert(source: &str, text: &str, options: &Options) -> Result<Converted, ManifestErrors> {
    convert_all(&[(source, text)], options)
}

/// [`convert`] over several files as one input (`orchctl apply -f DIR`): a Service's selector
/// is checked against the pod templates of every file, a name defined twice in any two is an
/// error, and any error in any file means nothing is returned.
pub fn convert_all(
    sources: &[(&str, &str)],
    options: &Options,
) -> Result<Converted, ManifestErrors> {
    let mut errors: Vec<ManifestError> = Vec::new();
    let mut parsed = Vec::new();
    for (source, text) in sources {
        match parse_documents(source, text) {
            Ok(docs) => parsed.push((*source, docs)),
            Err(ManifestErrors(e)) => errors.extend(e),
        }
    }
    match convert_documents(&parsed, options) {
        Ok(c) if errors.is_empty() => Ok(c),
        Ok(_) => Err(ManifestErrors(errors)),
        Err(ManifestErrors(e)) => {
            errors.extend(e);
            Err(ManifestErrors(errors))
        }
    }
}

/// [`convert_all`] over documents already parsed: per file, `(1-based document number,
/// document)`. For a caller that splits a file itself (orch documents mixed with Kubernetes
/// ones): the numbers it gives are the ones warnings and errors name.
pub fn convert_documents(
    sources: &[(&str, Vec<(usize, Value)>)],
    options: &Options,
) -> Result<Converted, ManifestErrors> {
    let mut errors: Vec<ManifestError> = Vec::new();
    let mut warnings: Vec<Warning> = Vec::new();
    let mut produced: Vec<Produced> = Vec::new();
    let mut templates: Templates = Vec::new();
    for (source, docs) in sources {
        for (n, doc) in docs {
            let mut cx = Ctx::new(source, *n);
            document(&mut cx, doc, "", options, &mut produced, &mut templates);
            warnings.append(&mut cx.warnings);
            errors.append(&mut cx.errors);
        }
    }
    // Checks over the whole input.
    let mut seen: HashMap<String, (String, usize)> = HashMap::new();
    for p in &produced {
        let source = p.origin.source.as_str();
        let mut cx = Ctx::new(source, p.origin.document);
        let md = p.object.metadata();
        match &p.check {
            Check::Selector(sel) => {
                let selected: Vec<&workloads::Seen> = templates
                    .iter()
                    .filter(|t| t.namespace == md.namespace && sel.matches(&t.labels))
                    .collect();
                if !sel.match_labels.is_empty() && selected.is_empty() {
                    cx.warn(
                        &format!("{}spec.selector", p.prefix),
                        format!(
                            "selects no pod template in this input (namespace {}): the route has no endpoints until replicas with these labels run",
                            md.namespace
                        ),
                    );
                }
                if let Object::Route(r) = &p.object {
                    for (i, port) in r.spec.ports.iter().enumerate() {
                        let Some(ProbePort::Name(name)) = &port.target_port else {
                            continue;
                        };
                        if !selected.is_empty() && selected.iter().all(|t| !t.ports.contains(name))
                        {
                            cx.warn(
                                &format!("{}spec.ports[{i}].targetPort", p.prefix),
                                format!("no pod template it selects has a port named {name:?}: connections to those replicas go nowhere"),
                            );
                        }
                    }
                }
            }
            Check::Governing(name) => {
                let found = produced.iter().any(|q| {
                    q.object.kind() == Kind::Route
                        && q.object.metadata().name == *name
                        && q.object.metadata().namespace == md.namespace
                });
                if !found {
                    cx.warn(
                        &format!("{}spec.serviceName", p.prefix),
                        format!("no Service {name:?} in this input: its replicas' own DNS names (NAME-0.{name}) need that headless Service"),
                    );
                }
            }
            Check::None => {}
        }
        let key = p.object.key();
        if let Some((file, doc)) = seen.insert(key, (source.to_string(), p.origin.document)) {
            cx.errors.push(ManifestError {
                source: source.into(),
                document: Some(p.origin.document),
                field: Some(FieldError {
                    path: format!("{}metadata.name", p.prefix),
                    value: format!("{:?}", p.object.metadata().name),
                    message: format!(
                        "{} in namespace {} is defined twice (also in {file} document {doc})",
                        p.origin.what,
                        p.object.metadata().namespace
                    ),
                }),
                message: String::new(),
            });
        }
        for fe in validate(&p.object) {
            cx.errors.push(validation_error(source, p, fe));
        }
        warnings.append(&mut cx.warnings);
        errors.append(&mut cx.errors);
    }
    // Document order (stable: within a document, the order found).
    let order: Vec<&str> = sources.iter().map(|(s, _)| *s).collect();
    let rank = |s: &str| order.iter().position(|o| *o == s).unwrap_or(usize::MAX);
    warnings.sort_by_key(|w| (rank(&w.source), w.document));
    if options.strict {
        errors.extend(warnings.iter().map(|w| ManifestError {
            source: w.source.clone(),
            document: Some(w.document),
            field: Some(FieldError {
                path: w.path.clone(),
                value: String::new(),
                message: format!("{} (strict: warnings are errors)", w.message),
            }),
            message: String::new(),
        }));
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| (rank(&e.source), e.document));
        return Err(ManifestErrors(errors));
    }
    let (objects, origins) = produced.into_iter().map(|p| (p.object, p.origin)).unzip();
    Ok(Converted {
        objects,
        origins,
        warnings,
    })
}

/// A validation failure of a converted object, naming the source field as near as it can.
fn validation_error(source: &str, p: &Produced, fe: FieldError) -> ManifestError {
    let orch = fe.path.clone();
    let tp = p.template_path;
    let rules: &[(&str, String)] = &[
        ("spec.template.labels", format!("{tp}.metadata.labels")),
        ("spec.template.init", format!("{tp}.spec.initContainers")),
        (
            "spec.template.mounts",
            format!("{tp}.spec.containers[0].volumeMounts"),
        ),
        (
            "spec.template.stopGracePeriod",
            format!("{tp}.spec.terminationGracePeriodSeconds"),
        ),
        (
            "spec.template.restartPolicy",
            format!("{tp}.spec.restartPolicy"),
        ),
        ("spec.template", format!("{tp}.spec.containers[0]")),
        ("spec.placement", format!("{tp}.spec")),
        (
            "spec.update.maxSurge",
            "spec.strategy.rollingUpdate.maxSurge".to_string(),
        ),
        (
            "spec.update.maxUnavailable",
            "spec.strategy.rollingUpdate.maxUnavailable".to_string(),
        ),
        (
            "spec.update.progressDeadline",
            "spec.progressDeadlineSeconds".to_string(),
        ),
    ];
    // A cron job's job sits at `spec.job` (orch) and `spec.jobTemplate.spec` (Kubernetes).
    let (probe, outer) = match orch.strip_prefix("spec.job.") {
        Some(rest) => (format!("spec.{rest}"), Some("spec.jobTemplate.spec.")),
        None => (orch.clone(), None),
    };
    let mapped = rules.iter().find_map(|(from, to)| {
        let rest = probe.strip_prefix(from)?;
        (rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
            .then(|| format!("{to}{rest}"))
    });
    let path = match (mapped, outer) {
        (Some(m), _) => m,
        (None, Some(outer)) => format!("{outer}{}", probe.trim_start_matches("spec.")),
        (None, None) => orch.clone(),
    };
    ManifestError {
        source: source.into(),
        document: Some(p.origin.document),
        field: Some(FieldError {
            path: format!("{}{path}", p.prefix),
            value: fe.value,
            message: format!("{} (as the orch {}'s {orch})", fe.message, p.origin.what),
        }),
        message: String::new(),
    }
}

/// One document (or one item of a `List`) at `prefix`.
fn document(
    cx: &mut Ctx,
    v: &Value,
    prefix: &str,
    options: &Options,
    out: &mut Vec<Produced>,
    templates: &mut Templates,
) {
    let mut root = Fields::new(cx, v, prefix);
    let api = root.str(cx, "apiVersion").unwrap_or_default();
    let kind = root.str(cx, "kind").unwrap_or_default();
    if api.is_empty() || kind.is_empty() {
        cx.error(
            &root.at(if api.is_empty() { "apiVersion" } else { "kind" }),
            "",
            format!(
                "a Kubernetes object needs apiVersion and kind (supported: {})",
                supported_list()
            ),
        );
        return;
    }
    if api == orch_core::model::object::API_VERSION {
        cx.error(
            &root.at("apiVersion"),
            &format!("{api:?}"),
            "an orch manifest, not a Kubernetes one: orch_import::convert (orchctl apply) takes both",
        );
        return;
    }
    match SUPPORTED.iter().find(|(_, k)| *k == kind) {
        None => {
            cx.error(
                &root.at("kind"),
                &format!("{kind:?}"),
                format!(
                    "orch does not convert this kind; supported: {}",
                    supported_list()
                ),
            );
            return;
        }
        Some((want, _)) if *want != api => {
            cx.error(
                &root.at("apiVersion"),
                &format!("{api:?}"),
                format!("{kind} is converted from apiVersion {want}"),
            );
            return;
        }
        Some(_) => {}
    }
    if kind == "List" {
        for (p, item) in root.list(cx, "items") {
            document(cx, item, &p, options, out, templates);
        }
        root.skip("metadata");
        root.finish(cx);
        return;
    }
    let pre = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}.")
    };
    match kind.as_str() {
        "Namespace" | "ServiceAccount" | "PersistentVolumeClaim" => {
            let name = root
                .obj(cx, "metadata")
                .and_then(|mut m| {
                    let n = m.str(cx, "name");
                    for k in m.rest() {
                        m.skip(&k);
                    }
                    n
                })
                .unwrap_or_default();
            let message = match kind.as_str() {
                "Namespace" => format!("Namespace {name}: no object; namespaces exist in orch once something is in them"),
                "ServiceAccount" => format!("ServiceAccount {name}: no object; service accounts have no effect in orch"),
                _ => format!("PersistentVolumeClaim {name}: no object; the claim name is a node-local orch volume created on first use (size, access modes and storage class are not honoured)"),
            };
            cx.warn(&root.at("kind"), message);
            for k in root.rest() {
                root.skip(&k);
            }
            return;
        }
        _ => {}
    }
    let Some(metadata) = metadata(cx, &mut root, &kind, options) else {
        return;
    };
    root.ignore(cx, "status", "ignored: set by the cluster");
    let what = format!("{kind}/{}", metadata.name);
    let mut check = Check::None;
    let mut template_path = "spec.template";
    let object = match kind.as_str() {
        "ConfigMap" => other::config(cx, metadata, &mut root),
        "Secret" => other::secret(cx, metadata, &mut root),
        _ => {
            let spec_path = root.at("spec");
            let Some(spec) = root.obj(cx, "spec") else {
                cx.error(&spec_path, "", format!("a {kind} needs a spec"));
                root.finish(cx);
                return;
            };
            match kind.as_str() {
                "Service" => {
                    let o = other::route(cx, metadata, spec);
                    if let Some(Object::Route(r)) = &o {
                        check = Check::Selector(r.spec.selector.clone());
                    }
                    o
                }
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicationController" => {
                    let w = match kind.as_str() {
                        "Deployment" => Workload::Deployment,
                        "StatefulSet" => Workload::StatefulSet,
                        "DaemonSet" => Workload::DaemonSet,
                        _ => Workload::ReplicationController,
                    };
                    if w == Workload::ReplicationController {
                        cx.warn(
                            &root.at("kind"),
                            "ReplicationController: converted as a Deployment would be (an orch service); a template change rolls its replicas, where a ReplicationController leaves running pods as they are",
                        );
                    }
                    if w == Workload::StatefulSet {
                        if let Some(Value::String(s)) =
                            v.get("spec").and_then(|s| s.get("serviceName"))
                        {
                            check = Check::Governing(s.clone());
                        }
                    }
                    workloads::service(cx, w, metadata, spec, templates)
                }
                "Job" => workloads::job(cx, metadata, spec, templates),
                "CronJob" => {
                    template_path = "spec.jobTemplate.spec.template";
                    workloads::cron_job(cx, metadata, spec, templates)
                }
                _ => None,
            }
        }
    };
    root.finish(cx);
    if let Some(object) = object {
        out.push(Produced {
            object,
            origin: Origin {
                source: cx.source.into(),
                document: cx.document,
                what,
            },
            check,
            prefix: pre,
            template_path,
        });
    }
}

/// The object's metadata, with the kind label; `None` (an error said) without a valid name.
fn metadata(cx: &mut Ctx, root: &mut Fields, kind: &str, options: &Options) -> Option<Metadata> {
    let path = root.at("metadata");
    let Some(mut md) = root.obj(cx, "metadata") else {
        cx.error(
            &format!("{path}.name"),
            "",
            "every object needs metadata.name",
        );
        return None;
    };
    let name = md.str(cx, "name");
    let namespace = md.str(cx, "namespace");
    let mut labels = md.str_map(cx, "labels");
    let annotations = md.str_map(cx, "annotations");
    md.ignore_all(cx, METADATA_IGNORED);
    md.finish(cx);
    let Some(name) = name else {
        cx.error(
            &format!("{path}.name"),
            "",
            "every object needs metadata.name (orch does not generate names)",
        );
        return None;
    };
    if let Err(m) = dns1123_label(&name) {
        cx.error(
            &format!("{path}.name"),
            &format!("{name:?}"),
            format!("{m} (orch names are DNS-1123 labels: lower case letters, digits and '-', at most 63)"),
        );
        return None;
    }
    if kind == "Service" && !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        cx.error(
            &format!("{path}.name"),
            &format!("{name:?}"),
            "a Service's name is a DNS-1035 label: it must start with a lower case letter",
        );
        return None;
    }
    let namespace = namespace
        .or_else(|| options.namespace.clone())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    if let Err(m) = dns1123_label(&namespace) {
        cx.error(&format!("{path}.namespace"), &format!("{namespace:?}"), m);
        return None;
    }
    labels.insert(KUBE_KIND_LABEL.into(), kind.into());
    Some(Metadata {
        name,
        namespace,
        labels: labels.into(),
        annotations,
        ..Metadata::default()
    })
}

/// The documents of `text`, each with its 1-based number (empty documents skipped but
/// counted). JSON: one object, a list of objects, or a `List`.
fn parse_documents(source: &str, text: &str) -> Result<Vec<(usize, Value)>, ManifestErrors> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestErrors::whole(
            source,
            format!(
                "manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES} bytes (4 MiB) — split it into smaller files",
                text.len()
            ),
        ));
    }
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ManifestErrors::whole(source, format!("invalid JSON: {e}")))?;
        match v {
            Value::Array(items) => items,
            other => vec![other],
        }
    } else {
        let mut budget = serde_saphyr::Budget::default();
        budget.max_documents = MAX_DOCUMENTS;
        budget.max_nodes = text
            .len()
            .saturating_mul(2)
            .saturating_add(10_000)
            .min(1_000_000);
        budget.max_events = budget.max_nodes * 2 + MAX_DOCUMENTS * 2 + 16;
        let mut opts = serde_saphyr::Options::default();
        opts.budget = Some(budget);
        serde_saphyr::from_multiple_with_options(text, opts).map_err(|e| {
            let s = e.to_string();
            let first = s
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown error")
                .to_string();
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            // The parser's advice names its own options; say what is wrong instead.
            let first = match first.split_once(", set DuplicateKeyPolicy") {
                Some((what, _)) => format!("{what} (a key may appear only once in a mapping)"),
                None => first.to_string(),
            };
            ManifestErrors::whole(source, format!("invalid YAML: {first}"))
        })?
    };
    if docs.len() > MAX_DOCUMENTS {
        return Err(ManifestErrors::whole(
            source,
            format!(
                "manifest has {} documents; the limit is {MAX_DOCUMENTS}",
                docs.len()
            ),
        ));
    }
    Ok(docs
        .into_iter()
        .enumerate()
        .filter(|(_, d)| !d.is_null())
        .map(|(i, d)| (i + 1, d))
        .collect())
}
