//! Reading manifests from files, directories and standard input, checking sizes before
//! reading so a huge file is refused without being loaded.

use std::io::Read;
use std::path::Path;

use orch_core::model::manifest::{self, MAX_MANIFEST_BYTES};
use orch_core::model::object::Object;

use crate::protocol::ManifestText;

/// Reads `path`: a file, `-` (standard input), or a directory (its `*.yaml`, `*.yml` and
/// `*.json` files in name order, not recursive).
pub fn read_manifests(path: &Path) -> Result<Vec<ManifestText>, String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("-: cannot read standard input: {e}"))?;
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "-: manifest is larger than the limit of {MAX_MANIFEST_BYTES} bytes (4 MiB)"
            ));
        }
        return Ok(vec![ManifestText {
            source: "-".into(),
            text,
        }]);
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!(
                "{}: no .yaml, .yml or .json files in this directory",
                path.display()
            ));
        }
        let mut out = Vec::new();
        for f in files {
            out.extend(read_manifests(&f)?);
        }
        return Ok(out);
    }
    let too_large = || {
        format!(
            "{}: manifest is larger than the limit of {MAX_MANIFEST_BYTES} bytes (4 MiB) — split it into smaller files",
            path.display()
        )
    };
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err(format!(
            "{}: manifest is {:.1} MiB; the limit is {MAX_MANIFEST_BYTES} bytes (4 MiB) — split it into smaller files",
            path.display(),
            meta.len() as f64 / (1 << 20) as f64
        ));
    }
    // The length a device or a pipe reports says nothing (0 for /dev/zero): read at most one
    // byte past the limit whatever it says.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(too_large());
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(vec![ManifestText {
        source: path.display().to_string(),
        text,
    }])
}

/// Parses manifests as one all-or-nothing set ([`manifest::parse_all`]). With `namespace`
/// (`orchctl -n`), objects whose document names no namespace go there, and a document that
/// names another one is refused naming both (as kubectl does); without it, they go to
/// `default`.
pub fn parse(manifests: &[ManifestText], namespace: Option<&str>) -> Result<Vec<Object>, String> {
    parse_with_warnings(manifests, namespace).map(|p| p.objects)
}

/// [`parse`], also returning a warning for each ignored field (those orch sets itself).
pub fn parse_with_warnings(
    manifests: &[ManifestText],
    namespace: Option<&str>,
) -> Result<manifest::Parsed, String> {
    let sources = || {
        manifests
            .iter()
            .map(|m| (m.source.as_str(), m.text.as_str()))
    };
    let manifest::Parsed {
        mut objects,
        warnings,
    } = manifest::parse_all_with_warnings(sources()).map_err(|e| e.to_string())?;
    let Some(ns) = namespace else {
        return Ok(manifest::Parsed { objects, warnings });
    };
    orch_core::model::validate::dns1123_label(ns)
        .map_err(|e| format!("namespace {ns:?} (-n): {e}"))?;
    let mut problems = Vec::new();
    let mut next = objects.iter_mut();
    for m in manifests {
        let named = manifest::named_namespaces(&m.source, &m.text).map_err(|e| e.to_string())?;
        for (i, written) in named.into_iter().enumerate() {
            let Some(o) = next.next() else { break };
            if !o.kind().namespaced() {
                continue;
            }
            match written {
                Some(w) if w != ns => problems.push(format!(
                    "{}: document {}: {} names namespace {w:?}, but the namespace asked for (-n) is {ns:?}; drop one of them",
                    m.source,
                    i + 1,
                    o.display_name()
                )),
                Some(_) => {}
                None => o.metadata_mut().namespace = ns.to_string(),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    // Moving objects into `ns` may make two of them one.
    let mut seen = std::collections::HashSet::new();
    for o in &objects {
        if !seen.insert(o.key()) {
            return Err(format!(
                "{} in namespace {ns:?} is defined twice",
                o.display_name()
            ));
        }
    }
    Ok(manifest::Parsed { objects, warnings })
}
