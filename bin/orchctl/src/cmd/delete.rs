//! `orchctl delete`: one object, or everything files define.

use anyhow::bail;
use orch_api::Client;
use orch_core::model::object::Kind;

use super::{import, import_options, in_namespace, kind_arg, Ctx};

/// `orchctl delete`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The kind (or `-f`).
    kind: Option<String>,
    /// The name.
    name: Option<String>,
    /// Delete the objects these files define (orch or Kubernetes manifests, a Compose file).
    #[arg(short = 'f', long = "filename")]
    files: Vec<std::path::PathBuf>,
    /// An object that is already gone is not an error.
    #[arg(long)]
    ignore_not_found: bool,
}

/// Deletes what the arguments name.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let targets = match args.files.is_empty() {
        false => {
            let imported = import(&args.files, &import_options(ctx, false))?;
            Targets::Files(imported.manifests, ctx.asked.as_deref())
        }
        true => Targets::One(args.kind, args.name, &ctx.ns),
    };
    delete(&ctx.client, targets, args.ignore_not_found).await
}

/// What `orchctl delete` deletes.
enum Targets<'a> {
    /// The objects files define (read and converted to orch manifests), with `-n` (if given)
    /// for those that name no namespace.
    Files(Vec<orch_api::protocol::ManifestText>, Option<&'a str>),
    /// `KIND NAME` or `KIND/NAME` in a namespace.
    One(Option<String>, Option<String>, &'a str),
}

async fn delete(
    client: &Client,
    targets: Targets<'_>,
    ignore_not_found: bool,
) -> anyhow::Result<()> {
    let targets: Vec<(Kind, String, String)> = match targets {
        Targets::Files(manifests, namespace) => orch_api::files::parse(&manifests, namespace)
            .map_err(anyhow::Error::msg)?
            .iter()
            .map(|o| {
                (
                    o.kind(),
                    o.metadata().namespace.clone(),
                    o.metadata().name.clone(),
                )
            })
            .collect(),
        Targets::One(kind, name, ns) => {
            let (kind, name) = match (kind, name) {
                (Some(kind), name) if kind.contains('/') && name.is_none() => {
                    let (k, n) = kind.split_once('/').expect("contains a slash");
                    (kind_arg(k)?, n.to_string())
                }
                (Some(kind), Some(name)) => (kind_arg(&kind)?, name),
                _ => bail!("usage: orchctl delete KIND NAME, or orchctl delete -f FILE"),
            };
            let ns = if kind.namespaced() { ns } else { "" };
            vec![(kind, ns.to_string(), name)]
        }
    };
    let total = targets.len();
    let (mut gone, mut failed) = (Vec::new(), 0);
    for (kind, ns, name) in targets {
        match client.delete(kind, &ns, &name).await {
            Ok(_) => outln!(
                "{}/{name}{} deleted",
                kind.as_str().to_ascii_lowercase(),
                in_namespace(&ns)
            ),
            Err(orch_api::client::ClientError::Api {
                code: orch_api::ErrorCode::NotFound,
                message,
            }) => {
                if !ignore_not_found {
                    gone.push(message);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    let hint = "--ignore-not-found makes that a success";
    for g in &gone {
        if total > 1 {
            eprintln!("{g}: already gone");
        }
    }
    match (gone.as_slice(), failed) {
        ([], 0) => Ok(()),
        ([one], 0) if total == 1 => bail!("{one}: nothing to delete ({hint})"),
        (gone, 0) => bail!(
            "{} of {total} objects were already gone, nothing else failed ({hint})",
            gone.len()
        ),
        (_, failed) => bail!("{failed} of {total} deletions failed"),
    }
}
