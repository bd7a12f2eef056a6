//! Stop requests against a real etcd and real processes: the copy is stopped and reported
//! terminal while its assignment stays, a job copy that had already exited keeps its outcome,
//! and a copy an earlier agent reported ended is not started again.

use drover_api::instance::{InstanceStatus, Phase};
use drover_api::names::InstanceId;
use drover_api::StopRequest;

use super::tests::{instance, rig, Rig, NODE};

fn stop(mut i: drover_api::Instance, reason: &str) -> drover_api::Instance {
    i.stop = Some(StopRequest {
        reason: reason.into(),
        requested_at: chrono::Utc::now(),
    });
    i
}

async fn status(rig: &Rig, id: &InstanceId) -> Option<InstanceStatus> {
    rig.store
        .get::<InstanceStatus>(&rig.keys.status(NODE, id))
        .await
        .expect("read status")
        .map(|v| v.value)
}

fn alive(pid: &str) -> bool {
    pid.parse().is_ok_and(drover_testkit::process_alive)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_request_stops_the_copy_and_reports_it_while_the_assignment_stays() {
    let mut rig = rig().await;
    rig.engine.unfence(NODE).await;
    let id = InstanceId::service("default", "web", 0).expect("id");
    let rev = rig.assign(&id).await;
    rig.cache(&id, rev);
    let slot = Rig::slot(&id);
    rig.reconcile(&slot).await;
    assert_eq!(rig.engine.running(None), 1, "started");
    let pid = rig.pid(&slot);
    // The leader rewrites the assignment with a stop request (same create revision).
    let asked = stop(instance(&id), "Drained");
    rig.store
        .put(&rig.keys.assignment(NODE, &id), &asked, None)
        .await
        .expect("stop request");
    rig.cache_value(asked, rev);
    rig.reconcile(&slot).await;
    assert!(!alive(&pid), "the process exited before the status says so");
    let s = status(&rig, &id).await.expect("a status");
    assert_eq!(s.phase, Phase::Stopped);
    assert_eq!(s.reason.as_deref(), Some("Drained"));
    // Reconciling again starts nothing: the copy stays stopped until the leader deletes it.
    rig.reconcile(&slot).await;
    assert_eq!(rig.engine.running(None), 0);
    assert!(
        rig.engine.instances().contains(&slot),
        "kept until unassigned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_copy_that_exited_before_its_stop_request_keeps_its_outcome() {
    let mut rig = rig().await;
    rig.engine.unfence(NODE).await;
    let id = InstanceId::job("default", "batch", 1, 0).expect("id");
    let mut job = instance(&id);
    job.spec.command = vec!["/bin/sh".into(), "-c".into(), "exit 0".into()];
    job.spec.restart_policy = drover_api::RestartPolicy::Never;
    let rev = rig
        .store
        .put(&rig.keys.assignment(NODE, &id), &job, None)
        .await
        .expect("assignment");
    rig.cache_value(job.clone(), rev);
    let slot = Rig::slot(&id);
    rig.reconcile(&slot).await;
    // Wait for the exit waiter to see the exit, without letting the reconcile judge it.
    tokio::time::timeout(super::tests::LIMIT, async {
        while rig.engine.instances().read(&slot, |e| e.state().exit()) == Some(None) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the copy exits");
    let asked = stop(job, "Preempted");
    rig.cache_value(asked, rev);
    rig.reconcile(&slot).await;
    let s = status(&rig, &id).await.expect("a status");
    assert_eq!(s.phase, Phase::Succeeded, "{s:?}");
    assert_eq!(s.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_an_earlier_agent_reported_failed_is_not_started_again() {
    let mut rig = rig().await;
    rig.engine.unfence(NODE).await;
    let id = InstanceId::service("default", "crashy", 0).expect("id");
    let rev = rig.assign(&id).await;
    let ended = InstanceStatus {
        id: id.clone(),
        node: NODE.into(),
        phase: Phase::Failed,
        reason: Some("CrashLoopBackOff".into()),
        message: None,
        container_id: None,
        restart_count: 3,
        exit_code: Some(1),
        health: drover_api::Health::Unknown,
        ports: vec![],
        generation: 1,
        attempt: 1,
        started_at: None,
        healthy_since: None,
        finished_at: Some(chrono::Utc::now()),
        updated_at: chrono::Utc::now(),
    };
    rig.store
        .put(&rig.keys.status(NODE, &id), &ended, None)
        .await
        .expect("status");
    rig.cache(&id, rev);
    rig.reconcile(&Rig::slot(&id)).await;
    assert_eq!(rig.engine.running(None), 0, "not started again");
    let s = status(&rig, &id).await.expect("a status");
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(s.restart_count, 3);
}
