//! Placement through the daemon and the CLI: a tainted node, `apply --plan`, and the pending
//! reason in `get` and `describe`.

mod common;

use std::time::Duration;

use common::*;

const WEB: &str = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: 2\n  template: {command: [server]}\n";

#[test]
fn taints_plan_and_pending_reasons_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(
        tmp.path(),
        &[
            "--runtime",
            "fake",
            "--labels",
            "zone=a",
            "--taints",
            "dedicated=db:NoSchedule",
        ],
    );
    eventually("the node registers", Duration::from_secs(20), || {
        d.ctl_ok(&["describe", "node", "test-node"])
            .contains("dedicated=db:NoSchedule")
            .then_some(())
    });

    // Without a toleration: the plan says it would stay pending, and why.
    let web = write(tmp.path(), "web.yaml", WEB);
    let plan = d.ctl_ok(&["apply", "--plan", "-f", web.to_str().unwrap()]);
    assert!(plan.contains("<pending>"), "{plan}");
    assert!(
        plan.contains("0/1 nodes are available: 1 have the untolerated taint dedicated"),
        "{plan}"
    );
    assert!(plan.contains("nothing was changed"), "{plan}");
    assert!(
        d.ctl_ok(&["get", "services"]).trim().is_empty(),
        "a plan created something"
    );

    // With one: the plan places both on the node.
    let tolerant = WEB.replace(
        "  template:",
        "  placement:\n    tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]\n  template:",
    );
    let tolerant_file = write(tmp.path(), "tolerant.yaml", &tolerant);
    let plan = d.ctl_ok(&["apply", "--plan", "-f", tolerant_file.to_str().unwrap()]);
    assert_eq!(plan.matches("test-node").count(), 2, "{plan}");
    assert!(!plan.contains("<pending>"), "{plan}");

    // Applied for real without the toleration: pending, with the reason in get and describe.
    d.ctl_ok(&["apply", "-f", web.to_str().unwrap()]);
    let services = eventually("the reason shows", Duration::from_secs(20), || {
        let out = d.ctl_ok(&["get", "services"]);
        out.contains("untolerated taint").then_some(out)
    });
    assert!(
        services.contains("0/2") || services.contains("0/1"),
        "{services}"
    );
    let describe = d.ctl_ok(&["describe", "service", "web"]);
    assert!(
        describe.contains("untolerated taint dedicated"),
        "{describe}"
    );

    // Applying the toleration places them.
    d.ctl_ok(&["apply", "-f", tolerant_file.to_str().unwrap()]);
    eventually("both placed", Duration::from_secs(20), || {
        let reps = d.replicas();
        (reps.len() == 2 && reps.iter().all(|r| r["spec"]["node"] == "test-node")).then_some(())
    });
}
