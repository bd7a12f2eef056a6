//! A simulated etcd for planner tests: a [`Snapshot`] that plans are applied to, and a
//! simulated agent that reports new instances Running and stop-requested ones Stopped.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use drover_api::{
    Capacity as NodeCapacity, Cpu, DriverKind, InstanceStatus, Memory, Node, NodeInfo, Phase, Task,
    TaskSpec,
};
use drover_store::Versioned;

use super::*;

pub(super) fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_700_000_000 + secs)
}

fn versioned<T>(key: String, value: T, rev: i64) -> Versioned<T> {
    Versioned {
        key,
        value,
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease: None,
    }
}

/// A snapshot plus a revision counter: applies plans like etcd would.
pub(super) struct Sim {
    pub(super) s: Snapshot,
    rev: i64,
    pub(super) config: ControllerConfig,
    /// New assignments get a Running status at once, stop-requested ones a Stopped status.
    pub(super) agent_runs: bool,
}

impl Sim {
    pub(super) fn new() -> Self {
        Self {
            s: Snapshot::default(),
            rev: 1,
            config: ControllerConfig::new("test"),
            agent_runs: true,
        }
    }

    pub(super) fn bump(&mut self) -> i64 {
        self.rev += 1;
        self.s.revision = self.rev;
        self.rev
    }

    pub(super) fn node(&mut self, name: &str, cpu_millis: u64, labels: &[(&str, &str)]) {
        let rev = self.bump();
        let node = Node {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            capacity: NodeCapacity {
                cpu: Cpu::millis(cpu_millis),
                memory: Memory::mebibytes(4096),
            },
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            drivers: vec![DriverKind::Process, DriverKind::Docker],
            version: "test".into(),
            tls: false,
            started_at: at(0),
        };
        self.s
            .nodes
            .insert(name.into(), versioned(format!("nodes/{name}"), node, rev));
    }

    pub(super) fn kill_node(&mut self, name: &str) {
        self.bump();
        self.s.nodes.remove(name);
    }

    pub(super) fn task(&mut self, name: &str, replicas: u32, f: impl FnOnce(&mut TaskSpec)) {
        let rev = self.bump();
        let mut spec = TaskSpec {
            command: vec!["/bin/true".into()],
            replicas,
            ..TaskSpec::default()
        };
        // A copy counts as available as soon as it runs, unless a test says otherwise.
        spec.update.min_healthy_seconds = 0;
        f(&mut spec);
        let tr = TaskRef::new("default", name);
        let generation = self
            .s
            .tasks
            .get(&tr)
            .map_or(1, |t| t.value.metadata.generation + 1);
        let mut task = Task::new("default", name, spec);
        task.metadata.generation = generation;
        self.s
            .tasks
            .insert(tr, versioned(format!("tasks/default/{name}"), task, rev));
    }

    pub(super) fn set_info(&mut self, node: &str, f: impl FnOnce(&mut NodeInfo)) {
        let rev = self.bump();
        let mut info = self
            .s
            .nodeinfos
            .get(node)
            .map(|i| i.value.clone())
            .unwrap_or(NodeInfo {
                name: node.into(),
                ..NodeInfo::default()
            });
        f(&mut info);
        self.s.nodeinfos.insert(
            node.into(),
            versioned(format!("nodeinfo/{node}"), info, rev),
        );
    }

    pub(super) fn set_phase(
        &mut self,
        id: &InstanceId,
        phase: Phase,
        finished: Option<DateTime<Utc>>,
    ) {
        let rev = self.bump();
        let status = self.status_of(id, phase, finished);
        let at = StatusKey::Node(status.node.clone());
        let key = format!("status/{}/{id}", status.node);
        self.s
            .set_status(id, at, Some(Some(versioned(key, status, rev))));
    }

    /// Writes a status for `id` under its node: `phase`, then whatever `f` changes.
    pub(super) fn set_status_with(
        &mut self,
        id: &InstanceId,
        phase: Phase,
        f: impl FnOnce(&mut InstanceStatus),
    ) {
        let rev = self.bump();
        let mut status = self.status_of(id, phase, None);
        f(&mut status);
        let at = StatusKey::Node(status.node.clone());
        let key = format!("status/{}/{id}", status.node);
        self.s
            .set_status(id, at, Some(Some(versioned(key, status, rev))));
    }

    /// An operator's request about `task`, as `drover` writes it.
    pub(super) fn request(&mut self, task: &str, id: &str, action: drover_api::RequestAction) {
        let rev = self.bump();
        let request = drover_api::TaskRequest {
            action,
            requested_at: at(0),
            by: "test".into(),
        };
        self.s
            .requests
            .entry(TaskRef::new("default", task))
            .or_default()
            .insert(
                id.into(),
                versioned(format!("requests/default/{task}/{id}"), request, rev),
            );
    }

    /// Deletes the status of `id` under the node it is assigned to.
    pub(super) fn forget_status(&mut self, id: &InstanceId) {
        let node = self.s.assignments[id].value.node.clone();
        self.s.set_status(id, StatusKey::Node(node), None);
    }

    /// The mod revision of the legacy status of `id`.
    pub(super) fn legacy_revision(&self, id: &InstanceId) -> i64 {
        self.s
            .status_keys_of(id)
            .into_iter()
            .find_map(|(at, rev)| (at == StatusKey::Legacy).then_some(rev))
            .expect("a legacy status")
    }

    /// As [`Sim::set_phase`], under the key of before statuses moved under their node.
    pub(super) fn set_legacy_phase(&mut self, id: &InstanceId, phase: Phase) {
        let rev = self.bump();
        let status = self.status_of(id, phase, None);
        self.s.set_status(
            id,
            StatusKey::Legacy,
            Some(Some(versioned(format!("status/{id}"), status, rev))),
        );
    }

    fn status_of(
        &self,
        id: &InstanceId,
        phase: Phase,
        finished: Option<DateTime<Utc>>,
    ) -> InstanceStatus {
        let a = &self.s.assignments[id].value;
        InstanceStatus {
            id: id.clone(),
            node: a.node.clone(),
            phase,
            reason: (phase == Phase::Failed).then(|| "CrashLoopBackOff".into()),
            message: None,
            container_id: None,
            restart_count: 0,
            exit_code: (phase == Phase::Failed).then_some(1),
            health: drover_api::Health::Unknown,
            ports: vec![],
            generation: a.generation,
            attempt: a.attempt,
            started_at: None,
            healthy_since: None,
            finished_at: finished,
            updated_at: finished.unwrap_or(at(0)),
        }
    }

    /// Applies a plan as the committer would (all compares are assumed to hold).
    pub(super) fn apply(&mut self, plan: &Plan) {
        let rev = self.bump();
        let mut new_ids = Vec::new();
        let mut stopped_ids = Vec::new();
        for step in &plan.steps {
            for w in &step.writes {
                match w {
                    Write::Assign(i) => {
                        assert!(
                            !self.s.assignments.contains_key(&i.id),
                            "id {} reused",
                            i.id
                        );
                        assert!(self.s.nodes.contains_key(&i.node), "placed on dead node");
                        new_ids.push(i.id.clone());
                        self.s
                            .assignments
                            .insert(i.id.clone(), versioned(String::new(), (**i).clone(), rev));
                    }
                    Write::RequestStop {
                        instance,
                        mod_revision,
                    } => {
                        let a = self
                            .s
                            .assignments
                            .get_mut(&instance.id)
                            .expect("stop requested for an assignment that exists");
                        assert_eq!(a.mod_revision, *mod_revision);
                        a.value = (**instance).clone();
                        a.mod_revision = rev;
                        stopped_ids.push(instance.id.clone());
                    }
                    Write::Unassign {
                        id, mod_revision, ..
                    } => {
                        assert_eq!(self.s.assignments[id].mod_revision, *mod_revision);
                        let node = self.s.assignments[id].value.node.clone();
                        self.s.assignments.remove(id);
                        // etcd deletes the status under the node; a legacy one stays.
                        self.s.set_status(id, StatusKey::Node(node), None);
                    }
                    Write::StatusUnchanged {
                        id,
                        at,
                        mod_revision,
                    } => {
                        assert_eq!(self.s.status_key_of(id).as_ref(), Some(at));
                        assert_eq!(self.s.statuses[id].mod_revision, *mod_revision);
                    }
                    Write::NodeGone { node } => {
                        assert!(!self.s.node_present(node), "node {node} is alive");
                    }
                    Write::DeadLetter(d) => {
                        self.s.deadletters.insert(
                            d.letter.instance.clone(),
                            versioned(String::new(), d.clone(), rev),
                        );
                    }
                    Write::NodeState { state, .. } => {
                        self.s.nodestates.insert(
                            state.name.clone(),
                            versioned(String::new(), state.clone(), rev),
                        );
                    }
                    Write::DeleteDeadLetter { instance, .. } => {
                        self.s.deadletters.remove(instance);
                    }
                    Write::DeleteStatus { id, at, .. } => self.s.set_status(id, at.clone(), None),
                    Write::DeleteTaskState { task, .. } => {
                        self.s.taskstates.remove(task);
                    }
                    Write::PutRun { record, .. } => {
                        let task = TaskRef::new(&record.namespace, &record.task);
                        self.s
                            .runs
                            .entry(task)
                            .or_default()
                            .insert(record.run, versioned(String::new(), record.clone(), rev));
                    }
                    Write::DeleteRun { task, run, .. } => {
                        if let Some(m) = self.s.runs.get_mut(task) {
                            m.remove(run);
                        }
                    }
                    Write::DeleteRequest { task, id, .. } => {
                        if let Some(m) = self.s.requests.get_mut(task) {
                            m.remove(id);
                        }
                    }
                    Write::DeleteTrigger { task, id, .. } => {
                        if let Some(m) = self.s.triggers.get_mut(task) {
                            m.remove(id);
                        }
                    }
                    Write::PutRevision(r) => {
                        let m = self.s.revisions.entry(r.task.clone()).or_default();
                        assert!(
                            !m.contains_key(&r.record.revision),
                            "revision {} of {} written twice",
                            r.record.revision,
                            r.task
                        );
                        m.insert(
                            r.record.revision,
                            versioned(String::new(), r.record.clone(), rev),
                        );
                    }
                    Write::DeleteRevision { task, revision, .. } => {
                        if let Some(m) = self.s.revisions.get_mut(task) {
                            m.remove(revision);
                        }
                    }
                }
            }
            if let Some(t) = &step.task {
                assert!(
                    plan.taskstates.contains_key(t),
                    "step of {t} without its task state"
                );
            }
        }
        for (t, w) in &plan.taskstates {
            self.s
                .taskstates
                .insert(t.clone(), versioned(String::new(), w.state.clone(), rev));
        }
        if self.agent_runs {
            for id in new_ids {
                self.set_phase(&id, Phase::Running, None);
            }
            for id in stopped_ids {
                self.set_phase(&id, Phase::Stopped, None);
            }
        }
    }

    /// Plans and applies until a plan is empty; returns the number of rounds that wrote
    /// more than a rollout record catching up with what it observed ([`only_bookkeeping`]).
    pub(super) fn converge(&mut self, now: DateTime<Utc>) -> usize {
        let mut rounds = 0;
        for _ in 0..40 {
            let p = plan(&self.s, now, &self.config);
            if p.is_empty() {
                return rounds;
            }
            if !only_bookkeeping(&self.s, &p) {
                rounds += 1;
            }
            self.apply(&p);
        }
        panic!("did not converge in 40 rounds");
    }

    pub(super) fn per_node(&self, task: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in self.s.assignments.values().filter(|a| a.value.task == task) {
            *m.entry(a.value.node.clone()).or_default() += 1;
        }
        m
    }

    pub(super) fn ids(&self, task: &str) -> Vec<InstanceId> {
        self.s
            .assignments
            .values()
            .filter(|a| a.value.task == task)
            .map(|a| a.value.id.clone())
            .collect()
    }
}

/// Whether `p` writes nothing but rollout records (a rollout noting the copies a previous
/// plan placed have started): no step, and task states that differ only in `rollout`.
pub(super) fn only_bookkeeping(s: &Snapshot, p: &Plan) -> bool {
    p.steps.is_empty()
        && p.taskstates.iter().all(|(t, w)| {
            let mut next = w.state.clone();
            let old = s
                .taskstates
                .get(t)
                .map(|v| v.value.clone())
                .unwrap_or_default();
            next.state.rollout = old.state.rollout.clone();
            next == old
        })
}
