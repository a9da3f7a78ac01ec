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

/// The Compose file names looked for in a directory, in the order `docker compose` tries them.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// The Compose file in `dir` (the first of [`COMPOSE_FILES`] there), if any.
pub fn compose_file_in(dir: &Path) -> Option<std::path::PathBuf> {
    COMPOSE_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

/// How [`import`] converts: `namespace` (`-n`: where objects that name none go), `project`
/// (a Compose file's; default its `name:`, else its directory's), `strict`. `base_dir` is not
/// read: each Compose file's paths resolve against its own directory.
pub use orch_import::Options as ImportOptions;

/// Files read and converted to orch manifests, ready for the daemon (which parses and
/// validates them as always).
#[derive(Clone, Debug, Default)]
pub struct Imported {
    /// orch manifests: orch files as they were written (the daemon reports their ignored
    /// fields itself); converted files as orch YAML, one text per object, named after the
    /// document it came from (`web.yaml document 2 (Deployment/web)`).
    pub manifests: Vec<ManifestText>,
    /// Every field the conversion did not honour (orch files' ignored fields excepted).
    pub warnings: Vec<orch_import::Warning>,
    /// The objects converted from Kubernetes manifests and Compose files (not the orch ones).
    pub converted: Vec<Object>,
}

/// Reads `paths` (files, directories, `-`) and converts Kubernetes manifests and Compose files
/// to orch manifests with [`orch_import::convert`] (relative paths of a Compose file resolved
/// against its directory). A directory takes manifests: a Compose file in one is refused
/// (name it with `-f`, or use `orchctl compose`), as a folder of YAML files may hold one
/// beside unrelated manifests. Errors name the file, document and field; any error and
/// nothing is returned.
pub fn import(paths: &[std::path::PathBuf], options: &ImportOptions) -> Result<Imported, String> {
    let mut out = Imported::default();
    let mut errors = Vec::new();
    // Manifests (orch's and Kubernetes') of every path as one input, so a Kubernetes Service
    // in one file selects the pods of a Deployment in another.
    let mut manifests = Vec::new();
    for path in paths {
        let in_directory = path.is_dir();
        for m in read_manifests(path)? {
            let format = orch_import::detect(&m.text);
            match format {
                orch_import::Format::Compose if in_directory => errors.push(format!(
                    "{}: a Compose file in a directory of manifests; apply it by name (`orchctl apply -f {0}`) or with `orchctl compose up -f {0}`",
                    m.source
                )),
                orch_import::Format::Compose => {
                    match orch_import::convert(&m.source, &m.text, &import_options(&m, options)) {
                        Ok(c) => add_converted(&mut out, c, |_| true),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                _ => manifests.push((m, format)),
            }
        }
    }
    let texts: Vec<(&str, &str)> = manifests
        .iter()
        .map(|(m, _)| (m.source.as_str(), m.text.as_str()))
        .collect();
    match orch_import::convert_all(
        &texts,
        &ImportOptions {
            base_dir: None,
            ..options.clone()
        },
    ) {
        Ok(c) => {
            // orch files go as they were written: the daemon reports their ignored fields.
            let orch: std::collections::HashSet<&str> = manifests
                .iter()
                .filter(|(_, f)| *f == orch_import::Format::Orch)
                .map(|(m, _)| m.source.as_str())
                .collect();
            add_converted(&mut out, c, |source| !orch.contains(source));
        }
        Err(e) => errors.push(e.to_string()),
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    let originals = manifests
        .into_iter()
        .filter(|(_, f)| *f == orch_import::Format::Orch)
        .map(|(m, _)| m);
    out.manifests.splice(0..0, originals);
    Ok(out)
}

/// The conversion options for `m`: a Compose file's paths resolve against its directory.
fn import_options(m: &ManifestText, options: &ImportOptions) -> orch_import::Options {
    let base_dir = (m.source != "-").then(|| {
        let parent = Path::new(&m.source)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
    });
    orch_import::Options {
        base_dir,
        ..options.clone()
    }
}

/// Adds the objects (one orch YAML text each, named after the document it came from) and
/// warnings of `c` whose source `keep` says to.
fn add_converted(out: &mut Imported, c: orch_import::Converted, keep: impl Fn(&str) -> bool) {
    out.warnings
        .extend(c.warnings.into_iter().filter(|w| keep(&w.source)));
    for (o, origin) in c.objects.into_iter().zip(c.origins) {
        if !keep(&origin.source) {
            continue;
        }
        out.manifests.push(ManifestText {
            source: format!(
                "{} document {} ({})",
                origin.source, origin.document, origin.what
            ),
            text: manifest::to_manifest_yaml(std::slice::from_ref(&o)),
        });
        out.converted.push(o);
    }
}
