//! `orchctl config`: the contexts of the config file.

use anyhow::Context;
use clap::Subcommand;

/// `orchctl config ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// List the contexts (`*` marks the current one).
    GetContexts,
    /// Make a context the current one.
    UseContext {
        /// Its name.
        name: String,
    },
}

pub(crate) fn config(path: &std::path::Path, command: ConfigCommand) -> anyhow::Result<()> {
    let mut c = orch_api::config::ClientConfig::load(path)
        .map_err(anyhow::Error::msg)?
        .with_context(|| {
            format!(
                "no config file at {} (`orchd admin` writes one)",
                path.display()
            )
        })?;
    match command {
        ConfigCommand::GetContexts => {
            for ctx in &c.contexts {
                let mark = if ctx.name == c.current_context {
                    "*"
                } else {
                    " "
                };
                outln!("{mark} {}\t{}", ctx.name, ctx.server);
            }
        }
        ConfigCommand::UseContext { name } => {
            c.context(Some(&name))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            c.current_context = name.clone();
            c.save(path).map_err(anyhow::Error::msg)?;
            outln!("current context: {name}");
        }
    }
    Ok(())
}
