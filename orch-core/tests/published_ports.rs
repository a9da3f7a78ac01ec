//! Published ports at apply: a published port collides with another service's published
//! port and with fixed ports that are host ports (process replicas, `hostNetwork`), not with
//! a container's fixed port, which is in the container's own network namespace — so
//! Compose's `ports: ["6379:6379"]` (publish 6379 for a container listening on 6379) applies.

use orch_core::engine::api;
use orch_core::model::manifest;
use orch_core::MemStore;

/// A service `name` listening on fixed `port`, from an image or as a process, publishing
/// `publish` if given.
fn service(name: &str, image: bool, port: u16, publish: Option<u16>) -> String {
    let run = if image {
        "image: docker.io/library/redis:7".to_string()
    } else {
        "command: [server]".to_string()
    };
    let publish = publish
        .map(|p| format!("  publish: [{{port: {p}, targetPort: tcp}}]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n{publish}  template:\n    {run}\n    ports: [{{name: tcp, port: {port}}}]\n"
    )
}

async fn apply(store: &MemStore, text: &str) -> Result<(), String> {
    let objects = manifest::parse("test.yaml", text).map_err(|e| e.to_string())?;
    api::apply(store, objects, false)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_container_may_publish_the_port_it_listens_on() {
    let store = MemStore::new();
    apply(&store, &service("redis", true, 6379, Some(6379)))
        .await
        .unwrap();
    // Another container listening on 6379 does not collide with the node's 6379 either.
    apply(&store, &service("cache", true, 6379, None))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_process_on_a_published_port_is_refused_naming_both() {
    let store = MemStore::new();
    apply(&store, &service("redis", true, 6379, Some(6379)))
        .await
        .unwrap();
    let err = apply(&store, &service("local", false, 6379, None))
        .await
        .unwrap_err();
    assert!(
        err.contains("spec.template.ports[0].port: 6379 is published by service default/redis"),
        "{err}"
    );
    // And the other way round: publishing a process's fixed host port.
    let store = MemStore::new();
    apply(&store, &service("local", false, 8080, None))
        .await
        .unwrap();
    let err = apply(&store, &service("web", true, 80, Some(8080)))
        .await
        .unwrap_err();
    assert!(
        err.contains("spec.publish[0].port: 8080 is the fixed host port of service default/local"),
        "{err}"
    );
}
