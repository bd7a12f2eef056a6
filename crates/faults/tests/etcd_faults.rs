//! Scenario 6 of the fault suite, etcd's members: one follower killed; the etcd leader killed;
//! the etcd leader cut off into a minority of one; all members restarted at once. With a
//! quorum left, agents and controllers renew their leases through the members that answer and
//! the witness sees no copy missing and none doubled. Without one (all restarted: at once, and
//! every second round down for longer than the agents' lease), agents may fence and stop their
//! copies — that is their promise — but nothing may run twice and the cluster must converge
//! once etcd is back.

mod common;

use std::time::Duration;

use common::etcd_whole;
use common::scenario::{rounds, Promise, Scenario};
use drover_faults::cluster::{Cluster, AGENT_TTL};

/// Which member a round takes away.
#[derive(Debug, Clone, Copy)]
enum Which {
    /// One that does not lead etcd now.
    Follower,
    /// The raft leader.
    Leader,
}

/// How a round takes it away, and gives it back.
#[derive(Debug, Clone, Copy)]
enum Away {
    /// `docker kill`, then `docker start` with its data.
    Killed,
    /// Cut off the cluster network (a minority of one), then reconnected.
    CutOff,
}

/// Runs scenario `name`: every round takes one member away for longer than every lease and
/// gives it back; with a quorum left throughout, no copy may go missing.
async fn one_member_away(name: &str, which: Which, away: Away) {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, name).await;
    for _ in 0..rounds() {
        let leader = etcd_whole(&cluster).await;
        let member = match which {
            Which::Leader => leader,
            Which::Follower => ["e1", "e2", "e3"]
                .into_iter()
                .find(|m| *m != leader)
                .map(str::to_string)
                .expect("a follower"),
        };
        scenario.fault();
        match away {
            Away::Killed => cluster.kill(&member).await.expect("kill"),
            Away::CutOff => cluster.disconnect(&member).await.expect("disconnect"),
        }
        // Agents and the leader must renew through the others meanwhile.
        tokio::time::sleep(AGENT_TTL + Duration::from_secs(2)).await;
        match away {
            Away::Killed => cluster.boot(&member).await.expect("boot"),
            Away::CutOff => cluster.reconnect(&member).await.expect("reconnect"),
        }
        etcd_whole(&cluster).await;
    }
    scenario.finish(Promise::Undisturbed).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn an_etcd_follower_killed_disturbs_no_copy() {
    one_member_away("6a etcd follower killed", Which::Follower, Away::Killed).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn the_etcd_leader_killed_disturbs_no_copy() {
    one_member_away("6b etcd leader killed", Which::Leader, Away::Killed).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn the_etcd_leader_cut_off_into_a_minority_disturbs_no_copy() {
    one_member_away(
        "6c etcd leader in a minority partition",
        Which::Leader,
        Away::CutOff,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn all_of_etcd_restarted_runs_nothing_twice_and_converges() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, "6d all etcd members restarted").await;
    for round in 0..rounds() {
        etcd_whole(&cluster).await;
        scenario.fault();
        for member in ["e1", "e2", "e3"] {
            cluster.kill(member).await.expect("kill");
        }
        // Every second round etcd stays down past the agents' lease: they fence, and start
        // their copies again once etcd is back.
        if round % 2 == 1 {
            tokio::time::sleep(AGENT_TTL).await;
        }
        for member in ["e1", "e2", "e3"] {
            cluster.boot(member).await.expect("boot");
        }
        etcd_whole(&cluster).await;
        tokio::time::sleep(AGENT_TTL).await;
    }
    scenario.finish(Promise::SafeOnly).await;
}
