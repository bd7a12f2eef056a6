//! Size is a limit like any other (promise 8): a task with a 20 KB spec and 300 replicas is
//! placed on hollow nodes, a small task applied right after it is placed too, the read verbs
//! still list every instance (megabytes of assignments), and a task over the per-task limit is
//! refused at apply by name.

mod common;

use std::time::Duration;

use common::{manifest, Daemon};
use drover_testkit::wait_for;

const NODES: usize = 30;
const REPLICAS: usize = 300;

fn task_with_env(name: &str, replicas: usize, env_bytes: usize) -> String {
    let blob = "x".repeat(env_bytes);
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [simulated]\n  replicas: {replicas}\n  resources: {{cpu: 1m, memory: 1Mi}}\n  env:\n    BLOB: \"{blob}\"\n"
    )
}

#[tokio::test]
async fn a_large_spec_with_many_replicas_is_placed_and_does_not_block_others() {
    let common::Etcd {
        server: _server,
        cli,
        store,
        keys,
    } = common::Etcd::start().await;
    let _controller = Daemon::start(&cli, &["controller", "--id", "big", "--lease-ttl", "5s"]);
    let _agent = common::hollow_agent(&cli, &store, &keys, NODES).await;

    let (_d1, big) = manifest(&task_with_env("big", REPLICAS, 20_000));
    cli.ok(&["apply", "-f", big.to_str().expect("utf-8")]).await;
    let (_d2, small) = manifest(&task_with_env("small", 2, 10));
    cli.ok(&["apply", "-f", small.to_str().expect("utf-8")])
        .await;

    let total = REPLICAS + 2;
    wait_for(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let running = common::running_statuses(&store, &keys).await?.len();
            (running == total).then_some(())
        },
    )
    .await
    .unwrap_or_else(|_| panic!("{total} instances (big and small) not Running in time"));
    let assignments = store.list_raw(&keys.assignments()).await.expect("list");
    let bytes: usize = assignments.items.iter().map(|a| a.value.len()).sum();
    assert_eq!(assignments.items.len(), total);
    assert!(
        bytes > 4 * 1024 * 1024,
        "the listing is over gRPC's default 4 MiB: {bytes}"
    );

    // The read path lists all of it in one consistent read.
    let out = cli.ok(&["get", "instances"]).await;
    assert_eq!(
        out.lines().filter(|l| l.contains("Running")).count(),
        total,
        "every instance listed"
    );

    // Over the per-task limit: refused by name, nothing written.
    let (_d3, huge) = manifest(&task_with_env("huge", 1, 300_000));
    let refused = cli
        .run(&["apply", "-f", huge.to_str().expect("utf-8")])
        .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("default/huge"), "names the task: {stderr}");
    assert!(stderr.contains("262144"), "names the limit: {stderr}");
    assert!(store
        .get_raw(&keys.task("default", "huge"))
        .await
        .expect("get")
        .is_none());
}
