//! `orchctl describe`: one object in detail, with its events.

use orch_api::client::ClientError;
use orch_api::protocol::ErrorCode;
use orch_api::{render, Client};
use orch_core::model::object::{Kind, Object};

use super::{Ctx, KindArg};

/// `orchctl describe`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The kind (singular and short names work too: svc, pod, no, cm, ev).
    #[arg(ignore_case = true)]
    kind: KindArg,
    /// The name.
    name: String,
}

/// Describes the object asked for.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    describe(&ctx.client, &ctx.ns, args.kind.into(), &args.name).await
}

async fn describe(client: &Client, ns: &str, kind: Kind, name: &str) -> anyhow::Result<()> {
    let obj = client.get(kind, ns, name).await?;
    let mut versions = Vec::new();
    if let Object::Service(s) = &obj {
        // The revision hash counts the secrets' and configs' revisions, as the controller does.
        let mut revs = std::collections::HashMap::new();
        for (secret, name) in s.spec.template.references() {
            let kind = if secret { Kind::Secret } else { Kind::Config };
            let rev = match client.get(kind, &s.metadata.namespace, name).await {
                Ok(o) => o.metadata().revision,
                // Missing: revision 0, as the controller counts it.
                Err(ClientError::Api {
                    code: ErrorCode::NotFound,
                    ..
                }) => 0,
                Err(e) => return Err(e.into()),
            };
            revs.insert((secret, name.to_string()), rev);
        }
        versions = s.spec.template.config_versions(|secret, name| {
            revs.get(&(secret, name.to_string())).copied().unwrap_or(0)
        });
    }
    let events = render::events_of(&obj, &client.list(Kind::Event, None).await?.objects);
    let related: Vec<Object> = match kind {
        Kind::Service => client
            .list(Kind::Replica, Some(ns))
            .await?
            .objects
            .into_iter()
            .filter(|r| matches!(r, Object::Replica(r) if r.spec.service.is_service(name)))
            .collect(),
        Kind::Node => client
            .list(Kind::Replica, None)
            .await?
            .objects
            .into_iter()
            .filter(|r| matches!(r, Object::Replica(r) if r.spec.node.as_deref() == Some(name)))
            .collect(),
        Kind::Job => {
            let owner = orch_core::model::object::Owner::Job(name.to_string());
            client
                .list(Kind::Replica, Some(ns))
                .await?
                .objects
                .into_iter()
                .filter(|r| matches!(r, Object::Replica(r) if r.spec.service == owner))
                .collect()
        }
        // A route's replicas: those its selector picks in its namespace, whatever owns them.
        Kind::Route => match &obj {
            Object::Route(route) => client
                .list(Kind::Replica, Some(ns))
                .await?
                .objects
                .into_iter()
                .filter(|r| route.spec.selector.matches(&r.metadata().labels))
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    out!("{}", render::describe(&obj, &versions, &events, &related));
    // A start waiting on an image pull says how far it got (asked live of the node).
    if let Object::Replica(r) = &obj {
        if let Ok(Some(text)) = client
            .progress(&r.metadata.namespace, &r.metadata.name)
            .await
        {
            outln!("Progress:         {text}");
        }
    }
    Ok(())
}
