//! `orchctl convert`: the orch objects Kubernetes manifests and Compose files become, without
//! a daemon.

use std::path::PathBuf;

use orch_core::model::object::Object;

use super::import;

/// `orchctl convert`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Files, folders or `-` (orch or Kubernetes manifests, a Compose file).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Yaml)]
    output: Format,
    /// Fail on any field orch does not honour (each is a warning otherwise).
    #[arg(long)]
    strict: bool,
    /// A Compose file's project: the namespace its objects go to (default: its `name:`,
    /// else its directory's name).
    #[arg(short = 'p', long = "project-name")]
    project: Option<String>,
}

/// How `convert` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Multi-document orch YAML manifests (what `orchctl apply -f` takes).
    Yaml,
    /// One JSON object, or a `List` of them.
    Json,
}

/// Prints what the files become; warnings on standard error.
pub(crate) fn run(namespace: Option<String>, args: Args) -> anyhow::Result<()> {
    let options = orch_api::files::ImportOptions {
        project: args.project.or_else(|| namespace.clone()),
        namespace: namespace.clone(),
        strict: args.strict,
        ..Default::default()
    };
    let imported = import(&args.files, &options)?;
    // Parsed as the daemon parses them: orch files' ignored fields are said too, and the
    // same object twice is refused.
    let parsed = orch_api::files::parse_with_warnings(&imported.manifests, namespace.as_deref())
        .map_err(anyhow::Error::msg)?;
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    if args.strict && !parsed.warnings.is_empty() {
        anyhow::bail!("--strict: {} fields not honoured", parsed.warnings.len());
    }
    match args.output {
        Format::Yaml => out!(
            "{}",
            orch_core::model::manifest::to_manifest_yaml(&parsed.objects)
        ),
        Format::Json => {
            let mut v: Vec<serde_json::Value> = parsed
                .objects
                .iter()
                .map(Object::to_display_value)
                .collect();
            for o in &mut v {
                if let Some(m) = o.as_object_mut() {
                    m.remove("status");
                }
            }
            let out = if v.len() == 1 {
                v.remove(0)
            } else {
                serde_json::json!({"apiVersion": "orch/v1", "kind": "List", "items": v})
            };
            outln!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}
