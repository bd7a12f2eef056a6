//! Checks over a set of tasks applied together: duplicate names, self-dependencies and
//! `dependsOn` cycles, within one apply and across applies (through stored tasks).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{finish, Location, ManifestError, Problem};
use crate::task::Task;

/// Cycles over `dependsOn` that involve at least one of `new` and close through `stored`.
pub(super) fn cross_apply_cycles(new: &[(Location, Task)], stored: &[Task]) -> Vec<Problem> {
    const STORED: &str = "<stored>";
    let redefined: HashSet<(&str, &str)> = new
        .iter()
        .map(|(_, t)| (t.metadata.namespace.as_str(), t.metadata.name.as_str()))
        .collect();
    // New tasks first: a cycle is reported at its earliest task, so one touching a new task is
    // reported at that task's location.
    let mut combined: Vec<(Location, Task)> = new.to_vec();
    combined.extend(
        stored
            .iter()
            .filter(|t| {
                !redefined.contains(&(t.metadata.namespace.as_str(), t.metadata.name.as_str()))
            })
            .map(|t| (Location::new(STORED, 0, None), t.clone())),
    );
    let by_name: HashMap<(&str, &str), usize> = combined
        .iter()
        .enumerate()
        .map(|(i, (_, t))| ((t.metadata.namespace.as_str(), t.metadata.name.as_str()), i))
        .collect();
    cycle_problems(&combined, &by_name)
        .into_iter()
        .filter(|p| p.source != STORED)
        .map(|mut p| {
            p.message
                .push_str(" (closing through tasks applied earlier)");
            p
        })
        .collect()
}

/// Checks a set of tasks applied together: no namespace/name pair twice, no task depending on
/// or blocking itself, and no cycle over `dependsOn` among the tasks of the set (dependencies
/// name tasks of the same namespace; ones outside the set are not checked here).
///
/// Each cycle is reported once, at its first task in input order, as `a -> b -> a`.
pub fn validate_set(tasks: &[(Location, Task)]) -> Result<(), ManifestError> {
    let mut problems = Vec::new();
    let mut by_name: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, (loc, task)) in tasks.iter().enumerate() {
        let key = (
            task.metadata.namespace.as_str(),
            task.metadata.name.as_str(),
        );
        if let Some(&first) = by_name.get(&key) {
            let other = &tasks[first].0;
            problems.push(loc.problem(
                "metadata.name",
                format!(
                    "duplicate task {}/{}: already defined in {} document {}",
                    key.0, key.1, other.source, other.document
                ),
            ));
        } else {
            by_name.insert(key, i);
        }
        for (list, path, verb) in [
            (&task.spec.depends_on, "spec.dependsOn", "depend on"),
            (&task.spec.blocks, "spec.blocks", "block"),
        ] {
            for (j, dep) in list.iter().enumerate() {
                if dep == &task.metadata.name {
                    problems.push(loc.problem(
                        &format!("{path}[{j}]"),
                        format!("a task cannot {verb} itself ({dep:?})"),
                    ));
                }
            }
        }
    }
    problems.extend(cycle_problems(tasks, &by_name));
    finish((), problems)
}

/// Finds `dependsOn` cycles (self-edges excluded: they are reported on their own).
fn cycle_problems(
    tasks: &[(Location, Task)],
    by_name: &HashMap<(&str, &str), usize>,
) -> Vec<Problem> {
    let refs: Vec<&Task> = tasks.iter().map(|(_, t)| t).collect();
    let (cycles, edges) = find_cycles(&refs, by_name);
    cycles
        .iter()
        .map(|cycle| {
            let first = cycle[0];
            let second = cycle.get(1).copied().unwrap_or(first);
            let (loc, _) = &tasks[first];
            let j = edges[first]
                .iter()
                .find(|(_, t)| *t == second)
                .map_or(0, |(j, _)| *j);
            loc.problem(
                &format!("spec.dependsOn[{j}]"),
                format!("dependency cycle: {}", cycle_names(&refs, cycle)),
            )
        })
        .collect()
}

/// `a -> b -> a` for a cycle of task indices.
fn cycle_names(tasks: &[&Task], cycle: &[usize]) -> String {
    let mut names: Vec<&str> = cycle
        .iter()
        .map(|n| tasks[*n].metadata.name.as_str())
        .collect();
    names.push(tasks[cycle[0]].metadata.name.as_str());
    names.join(" -> ")
}

/// Server-side validation of the tasks stored in etcd, which any client may have written
/// (promise 7): each task's own rules (as `apply` checks them), the key naming it, the size
/// limit, and `dependsOn` cycles over all of them. Returns the reason for every invalid task,
/// by the (namespace, name) of its key; every member of a cycle is invalid, since none of
/// them could ever run.
pub fn validate_stored(stored: &[((String, String), &Task)]) -> BTreeMap<(String, String), String> {
    let mut invalid: BTreeMap<(String, String), String> = BTreeMap::new();
    for ((ns, name), task) in stored {
        let mut reasons: Vec<String> = Vec::new();
        if (
            task.metadata.namespace.as_str(),
            task.metadata.name.as_str(),
        ) != (ns, name)
        {
            reasons.push(format!(
                "metadata names {}/{} but the key names {ns}/{name}",
                task.metadata.namespace, task.metadata.name
            ));
        }
        reasons.extend(
            task.validate()
                .iter()
                .filter(|e| !grandfathered(e))
                .map(ToString::to_string),
        );
        if let Err(e) = crate::task::check_size(task) {
            reasons.push(e.to_string());
        }
        for (list, path) in [
            (&task.spec.depends_on, "spec.dependsOn"),
            (&task.spec.blocks, "spec.blocks"),
        ] {
            if list.iter().any(|d| d == name) {
                reasons.push(format!("{path}: names the task itself"));
            }
        }
        if !reasons.is_empty() {
            invalid.insert((ns.clone(), name.clone()), reasons.join("; "));
        }
    }
    let refs: Vec<&Task> = stored.iter().map(|(_, t)| *t).collect();
    let by_name: HashMap<(&str, &str), usize> = stored
        .iter()
        .enumerate()
        .map(|(i, ((ns, name), _))| ((ns.as_str(), name.as_str()), i))
        .collect();
    let (cycles, _) = find_cycles(&refs, &by_name);
    for cycle in &cycles {
        let reason = format!(
            "spec.dependsOn: dependency cycle: {}",
            cycle_names(&refs, cycle)
        );
        for &i in cycle {
            let entry = invalid.entry(stored[i].0.clone()).or_default();
            if !entry.is_empty() {
                entry.push_str("; ");
            }
            entry.push_str(&reason);
        }
    }
    invalid
}

/// Rules `apply` enforces on new input but the leader does not hold stored tasks for: a
/// service with `dependsOn`, `blocks` or `maxConsecutiveFailures` was accepted (and those
/// fields ignored) before `apply` refused them, and holding such a service after an upgrade
/// would freeze it. They stay ignored on services, as before.
fn grandfathered(error: &crate::task::TaskError) -> bool {
    match error {
        crate::task::TaskError::Invalid { field, message } => {
            matches!(
                field.as_str(),
                "spec.dependsOn" | "spec.blocks" | "spec.maxConsecutiveFailures"
            ) && message.starts_with("not allowed for a service")
        }
        _ => false,
    }
}

/// The `dependsOn` cycles among `tasks` (each in canonical rotation, once) and the edges:
/// task index -> (dependsOn position, target index).
#[allow(clippy::type_complexity)]
fn find_cycles(
    tasks: &[&Task],
    by_name: &HashMap<(&str, &str), usize>,
) -> (Vec<Vec<usize>>, Vec<Vec<(usize, usize)>>) {
    // Edges: task index -> (dependsOn position, target index).
    let edges: Vec<Vec<(usize, usize)>> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.spec
                .depends_on
                .iter()
                .enumerate()
                .filter_map(|(j, dep)| {
                    let target = *by_name.get(&(t.metadata.namespace.as_str(), dep.as_str()))?;
                    (target != i).then_some((j, target))
                })
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Gray,
        Black,
    }
    let mut color = vec![Color::White; tasks.len()];
    let mut cycles: BTreeMap<Vec<usize>, ()> = BTreeMap::new();
    for root in 0..tasks.len() {
        if color[root] != Color::White {
            continue;
        }
        // Iterative DFS: stack of (node, next edge index); `path` mirrors the gray nodes.
        let mut stack = vec![(root, 0usize)];
        color[root] = Color::Gray;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(_, target)) = edges[node].get(*next) {
                *next += 1;
                match color[target] {
                    Color::White => {
                        color[target] = Color::Gray;
                        stack.push((target, 0));
                    }
                    Color::Gray => {
                        let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|(n, _)| *n).collect();
                        // Canonical rotation: start at the earliest task of the input.
                        let min_at = cycle
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, n)| **n)
                            .map_or(0, |(k, _)| k);
                        cycle.rotate_left(min_at);
                        cycles.insert(cycle, ());
                    }
                    Color::Black => {}
                }
            } else {
                color[node] = Color::Black;
                stack.pop();
            }
        }
    }
    (cycles.into_keys().collect(), edges)
}
