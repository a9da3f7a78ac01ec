//! `orchctl config`: the contexts of the config file.

use anyhow::Context;
use clap::Subcommand;

/// `orchctl config ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List the contexts (`*` marks the current one).
    GetContexts,
    /// Make a context the current one.
    UseContext {
        /// Its name.
        name: String,
    },
}

/// Runs the config command on the config file at `path`.
pub(crate) fn run(path: &std::path::Path, command: Command) -> anyhow::Result<()> {
    config(path, command)
}

fn config(path: &std::path::Path, command: Command) -> anyhow::Result<()> {
    let mut c = orch_api::config::ClientConfig::load(path)
        .map_err(anyhow::Error::msg)?
        .with_context(|| {
            format!(
                "no config file at {} (`orchd admin` writes one)",
                path.display()
            )
        })?;
    match command {
        Command::GetContexts => {
            for ctx in &c.contexts {
                let mark = if ctx.name == c.current_context {
                    "*"
                } else {
                    " "
                };
                if ctx.managers.is_empty() {
                    outln!("{mark} {}\t{}", ctx.name, ctx.server);
                } else {
                    outln!(
                        "{mark} {}\t{}\t(and {})",
                        ctx.name,
                        ctx.server,
                        ctx.managers.join(", ")
                    );
                }
            }
        }
        Command::UseContext { name } => {
            c.context(Some(&name))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            c.current_context = name.clone();
            c.save(path).map_err(anyhow::Error::msg)?;
            outln!("current context: {name}");
        }
    }
    Ok(())
}
