//! `orchctl create secret|config`: a secret or a config from literals and files.

use anyhow::bail;
use orch_api::Client;

use super::{applied_line, Ctx};

/// `orchctl create`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// What to create (`configmap` works too).
    kind: CreateKind,
    /// Its name.
    name: String,
    /// `KEY=VALUE`; repeatable.
    #[arg(long = "from-literal")]
    literals: Vec<String>,
    /// `[KEY=]PATH`: the file's contents under KEY (default: the file's name); repeatable.
    #[arg(long = "from-file")]
    files: Vec<String>,
}

/// What `orchctl create` creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CreateKind {
    Secret,
    #[value(alias = "configmap")]
    Config,
}

/// Creates (or replaces) the secret or config.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    create(
        &ctx.client,
        &ctx.ns,
        args.kind,
        &args.name,
        &args.literals,
        &args.files,
    )
    .await
}

/// `orchctl create secret|config NAME --from-literal K=V --from-file [K=]PATH`: builds the
/// object and applies it (so it replaces one of that name). Values never reach the terminal.
async fn create(
    client: &Client,
    ns: &str,
    kind: CreateKind,
    name: &str,
    literals: &[String],
    files: &[String],
) -> anyhow::Result<()> {
    let kind = match kind {
        CreateKind::Secret => "Secret",
        CreateKind::Config => "Config",
    };
    let mut data = std::collections::BTreeMap::new();
    for l in literals {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--from-literal {l:?}: expected KEY=VALUE"))?;
        data.insert(k.to_string(), v.to_string());
    }
    for f in files {
        let (k, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), std::path::PathBuf::from(p)),
            None => {
                let p = std::path::PathBuf::from(f);
                let k = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--from-file {f:?}: no file name to use as the key; give KEY=PATH"
                        )
                    })?
                    .to_string();
                (k, p)
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("--from-file {}: {e}", path.display()))?;
        data.insert(k, text);
    }
    if data.is_empty() {
        bail!(
            "create {}: give --from-literal KEY=VALUE or --from-file [KEY=]PATH",
            kind.to_ascii_lowercase()
        );
    }
    let doc = serde_json::json!({
        "apiVersion": "orch/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    });
    let manifests = vec![orch_api::protocol::ManifestText {
        source: format!("orchctl create {} {name}", kind.to_ascii_lowercase()),
        text: doc.to_string(),
    }];
    let applied = client.apply(manifests, false, None).await?;
    for r in applied.results {
        outln!("{}", applied_line(&r, false));
    }
    Ok(())
}
