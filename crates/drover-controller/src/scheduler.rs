//! The pure scheduler: filter → score → pick over a snapshot of nodes and their allocations.
//!
//! Nothing here does I/O or reads a clock, so placement is a deterministic function of its input
//! and is tested with property tests (see `scheduler/tests.rs`). The planner builds the
//! [`NodeView`]s from etcd's state and turns [`Decision`]s into fenced writes.
//!
//! - **Filter**: the node is schedulable (not cordoned, not draining — dead nodes are never
//!   offered), supports the request's driver, carries every `nodeSelector` label, and has the
//!   requested CPU and memory left.
//! - **Score**, lowest wins: a node the request asks to avoid comes last; then the fewest instances
//!   of the same task (spread); then the lowest allocation after placement (least allocated);
//!   then the node name, so ties break the same way on every replica.
//! - **Pick**: requests are placed in priority order (higher first, then by name), each placement
//!   updating the allocations the next one sees.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;

/// CPU (millicores) and memory (bytes): a node's capacity, its allocation, or a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// CPU in millicores (`250m` = 250, `2` = 2000).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Capacity {
    /// The sum of two amounts, saturating instead of overflowing.
    #[must_use]
    pub fn saturating_add(self, other: Capacity) -> Capacity {
        Capacity {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    /// The difference of two amounts, stopping at zero.
    #[must_use]
    pub fn saturating_sub(self, other: Capacity) -> Capacity {
        Capacity {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }
}

/// Why a node cannot take new instances at all, whatever the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// An operator cordoned it.
    Cordoned,
    /// An operator is draining it.
    Draining,
    /// Its `nodeinfo` record does not decode, so whether it is cordoned is unknown: nothing new
    /// is placed there until the record is readable again (its instances stay).
    RecordInvalid,
}

/// The scheduler's view of one live node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// What the node advertises.
    pub capacity: Capacity,
    /// The sum of the requests of the instances assigned to it.
    pub allocated: Capacity,
    /// The node's labels, matched against `nodeSelector`.
    pub labels: BTreeMap<String, String>,
    /// Driver names the node supports. A node with the `hollow` driver simulates every kind
    /// of task, so it accepts any driver (see [`NodeView::supports`]).
    pub drivers: Vec<String>,
    /// Set when the node must not receive new instances.
    pub unavailable: Option<Unavailable>,
    /// Instances assigned to the node, per task key, for spreading.
    pub task_counts: BTreeMap<String, u32>,
}

impl NodeView {
    /// Whether the node can run a task of `driver`: it advertises that driver, or it is a
    /// hollow node, which simulates every kind of task.
    pub fn supports(&self, driver: &str) -> bool {
        self.drivers.iter().any(|d| d == driver || d == "hollow")
    }
}

/// One instance to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The task key (`<namespace>/<name>`); replicas of one task are spread apart.
    pub task: String,
    /// A stable name that orders requests of equal priority (e.g. `<task key>/<slot>`).
    pub name: String,
    /// 0..=100; higher is placed first.
    pub priority: u8,
    /// CPU and memory the instance needs.
    pub demand: Capacity,
    /// Labels the node must carry.
    pub node_selector: BTreeMap<String, String>,
    /// The driver the instance runs under.
    pub driver: String,
    /// A node to use only if nothing else fits (where the instance last failed).
    pub avoid_node: Option<String>,
}

/// Why one node was filtered out for one request; the first failing filter wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    /// The node is cordoned.
    Cordoned,
    /// The node is draining.
    Draining,
    /// The node's record does not decode.
    RecordInvalid,
    /// The node lacks the request's driver.
    DriverUnsupported,
    /// A `nodeSelector` label is missing or different.
    NodeSelectorMismatch,
    /// Not enough CPU left.
    InsufficientCpu,
    /// Not enough memory left.
    InsufficientMemory,
}

impl Rejection {
    fn describe(self) -> &'static str {
        match self {
            Rejection::Cordoned => "cordoned",
            Rejection::Draining => "draining",
            Rejection::RecordInvalid => "node record invalid",
            Rejection::DriverUnsupported => "driver unsupported",
            Rejection::NodeSelectorMismatch => "node selector mismatch",
            Rejection::InsufficientCpu => "insufficient cpu",
            Rejection::InsufficientMemory => "insufficient memory",
        }
    }
}

/// A request no node could take, with the count of nodes per reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    /// Live nodes considered.
    pub nodes: usize,
    /// How many nodes failed each filter (each node counted once, under its first failure).
    pub rejections: BTreeMap<Rejection, usize>,
}

impl fmt::Display for Unschedulable {
    /// `Unschedulable: 0/3 nodes are available: 2 insufficient cpu, 1 node selector mismatch`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unschedulable: 0/{} nodes are available", self.nodes)?;
        if self.nodes == 0 {
            return write!(f, ": no live nodes");
        }
        let mut sep = ": ";
        let mut sorted: Vec<_> = self.rejections.iter().collect();
        // Most common reason first, like the Kubernetes scheduler.
        sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, count) in sorted {
            write!(f, "{sep}{count} {}", reason.describe())?;
            sep = ", ";
        }
        Ok(())
    }
}

/// The outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Place it on this node.
    Placed(String),
    /// It fits nowhere right now.
    Unschedulable(Unschedulable),
}

/// Nodes and their allocations, updated by every placement.
#[derive(Clone, Debug, Default)]
pub struct Scheduler {
    nodes: BTreeMap<String, NodeView>,
}

impl Scheduler {
    /// A scheduler over these live nodes.
    #[must_use]
    pub fn new(nodes: impl IntoIterator<Item = NodeView>) -> Self {
        Self {
            nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        }
    }

    /// The nodes with the allocations of every placement made so far.
    #[must_use]
    pub fn nodes(&self) -> &BTreeMap<String, NodeView> {
        &self.nodes
    }

    /// Returns the reason `node` cannot take `req`, or `None` when it can.
    #[must_use]
    pub fn reject(node: &NodeView, req: &Request) -> Option<Rejection> {
        match node.unavailable {
            Some(Unavailable::Cordoned) => return Some(Rejection::Cordoned),
            Some(Unavailable::Draining) => return Some(Rejection::Draining),
            Some(Unavailable::RecordInvalid) => return Some(Rejection::RecordInvalid),
            None => {}
        }
        if !node.supports(&req.driver) {
            return Some(Rejection::DriverUnsupported);
        }
        if req
            .node_selector
            .iter()
            .any(|(k, v)| node.labels.get(k) != Some(v))
        {
            return Some(Rejection::NodeSelectorMismatch);
        }
        let free = node.capacity.saturating_sub(node.allocated);
        if req.demand.cpu_millis > free.cpu_millis {
            return Some(Rejection::InsufficientCpu);
        }
        if req.demand.memory_bytes > free.memory_bytes {
            return Some(Rejection::InsufficientMemory);
        }
        None
    }

    /// Places one request and records its allocation.
    ///
    /// # Guarantees
    ///
    /// A placed request passed every filter on the chosen node, so no node's allocation exceeds
    /// its capacity through this scheduler; among fitting nodes the chosen one has the fewest
    /// instances of the request's task, unless that node is the one to avoid.
    pub fn place(&mut self, req: &Request) -> Decision {
        let mut best: Option<((bool, u32, u64), &str)> = None;
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        for node in self.nodes.values() {
            if let Some(why) = Self::reject(node, req) {
                *rejections.entry(why).or_default() += 1;
                continue;
            }
            let score = (
                req.avoid_node.as_deref() == Some(node.name.as_str()),
                node.task_counts.get(&req.task).copied().unwrap_or(0),
                allocation_ppm(node.allocated.saturating_add(req.demand), node.capacity),
            );
            // Nodes iterate in name order, so a strict `<` keeps the first name on ties.
            if best.as_ref().is_none_or(|(s, _)| score < *s) {
                best = Some((score, node.name.as_str()));
            }
        }
        let Some((_, name)) = best else {
            return Decision::Unschedulable(Unschedulable {
                nodes: self.nodes.len(),
                rejections,
            });
        };
        let name = name.to_owned();
        if let Some(node) = self.nodes.get_mut(&name) {
            node.allocated = node.allocated.saturating_add(req.demand);
            *node.task_counts.entry(req.task.clone()).or_default() += 1;
        }
        Decision::Placed(name)
    }

    /// Places every request in priority order (higher first, then by name); the result is
    /// index-aligned with `requests`.
    ///
    /// # Guarantees
    ///
    /// Everything [`Scheduler::place`] guarantees, and: a request is only considered after every
    /// request of higher priority, so when capacity runs short the lower priorities go without.
    /// The decisions are exactly those of calling [`Scheduler::place`] for each request in that
    /// order (a property test holds the two equal); they are only cheaper to reach.
    ///
    /// # Cost
    ///
    /// Consecutive requests of one placement class (the replicas of one task: same task,
    /// demand, driver and selector) share one pass over the nodes and a heap of the nodes that
    /// fit, so placing `k` replicas on `n` nodes costs `O(n + k log n)` instead of `O(k n)`.
    pub fn schedule_all(&mut self, requests: &[Request]) -> Vec<Decision> {
        let order = placement_order(requests);
        let mut out: Vec<Option<Decision>> = vec![None; requests.len()];
        let mut rest = order.as_slice();
        while let Some(&first) = rest.first() {
            let len = rest
                .iter()
                .take_while(|&&i| same_class(&requests[first], &requests[i]))
                .count();
            let (run, after) = rest.split_at(len);
            for (i, decision) in run.iter().zip(self.place_run(requests, run)) {
                out[*i] = Some(decision);
            }
            rest = after;
        }
        out.into_iter().flatten().collect()
    }

    /// Places requests of one placement class, in the given order, with one heap of the nodes
    /// that fit: only the chosen node's score changes with each placement.
    fn place_run(&mut self, requests: &[Request], run: &[usize]) -> Vec<Decision> {
        let Some(&first) = run.first() else {
            return Vec::new();
        };
        let class = &requests[first];
        let key = |node: &NodeView| {
            Reverse((
                node.task_counts.get(&class.task).copied().unwrap_or(0),
                allocation_ppm(node.allocated.saturating_add(class.demand), node.capacity),
                node.name.clone(),
            ))
        };
        let mut heap: BinaryHeap<Reverse<(u32, u64, String)>> = self
            .nodes
            .values()
            .filter(|node| Self::reject(node, class).is_none())
            .map(key)
            .collect();
        // Once nothing fits, nothing in this run changes the nodes any more: every later
        // request of the run is refused for the same reasons.
        let mut refused: Option<Unschedulable> = None;
        let mut out = Vec::with_capacity(run.len());
        for &i in run {
            let req = &requests[i];
            let Some(Reverse(best)) = heap.pop() else {
                let why = refused.get_or_insert_with(|| self.unschedulable(class));
                out.push(Decision::Unschedulable(why.clone()));
                continue;
            };
            // The node to avoid scores last: take the next best if there is one.
            let chosen = if req.avoid_node.as_deref() == Some(best.2.as_str()) {
                match heap.pop() {
                    Some(Reverse(next)) => {
                        heap.push(Reverse(best));
                        next
                    }
                    None => best,
                }
            } else {
                best
            };
            let name = chosen.2;
            if let Some(node) = self.nodes.get_mut(&name) {
                node.allocated = node.allocated.saturating_add(req.demand);
                *node.task_counts.entry(req.task.clone()).or_default() += 1;
                if Self::reject(node, class).is_none() {
                    heap.push(key(node));
                }
            }
            out.push(Decision::Placed(name));
        }
        out
    }

    /// Why no node can take `req`: every node's first failing filter, counted.
    fn unschedulable(&self, req: &Request) -> Unschedulable {
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        for node in self.nodes.values() {
            if let Some(why) = Self::reject(node, req) {
                *rejections.entry(why).or_default() += 1;
            }
        }
        Unschedulable {
            nodes: self.nodes.len(),
            rejections,
        }
    }
}

/// The order requests are placed in: higher priority first, then by name, then as given.
fn placement_order(requests: &[Request]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&requests[a], &requests[b]);
        rb.priority
            .cmp(&ra.priority)
            .then_with(|| ra.name.cmp(&rb.name))
            .then(a.cmp(&b))
    });
    order
}

/// Whether two requests are filtered and scored alike on every node (they may differ in the
/// node they avoid, which the run handles per request, and in their names and priorities,
/// which only order them).
fn same_class(a: &Request, b: &Request) -> bool {
    a.task == b.task
        && a.demand == b.demand
        && a.driver == b.driver
        && a.node_selector == b.node_selector
}

/// Mean of the CPU and memory allocation ratios, in parts per million (a resource with zero
/// capacity counts as fully allocated once anything asks for it, and as free otherwise).
fn allocation_ppm(allocated: Capacity, capacity: Capacity) -> u64 {
    fn ratio(used: u64, cap: u64) -> u64 {
        if cap == 0 {
            return if used == 0 { 0 } else { 1_000_000 };
        }
        let r = u128::from(used) * 1_000_000 / u128::from(cap);
        u64::try_from(r).unwrap_or(u64::MAX)
    }
    let cpu = ratio(allocated.cpu_millis, capacity.cpu_millis);
    let mem = ratio(allocated.memory_bytes, capacity.memory_bytes);
    cpu / 2 + mem / 2
}

#[cfg(test)]
mod tests;
