//! The few facts the process driver reads from `/proc` and the signals it sends: start times
//! (to tell a live process from a reused pid) and process-group membership.

use rustix::process::{kill_process_group, Pid, Signal};

/// The fields of `/proc/<pid>/stat` we use.
pub(super) struct Stat {
    pub(super) state: char,
    pub(super) pgrp: u32,
    pub(super) start_ticks: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    // `comm` (field 2) may contain spaces and parentheses: split after its last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

pub(super) fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}
/// Whether any non-zombie process is in group `pgid`. Zombies do not count: whoever reaps them
/// (init, a subreaper) may be slow, and they hold nothing.
pub(super) fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| read_stat(pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z'))
}

pub(super) fn signal_group(pgid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return;
    };
    if let Err(e) = kill_process_group(pid, signal) {
        // ESRCH: it ended on its own meanwhile, which is what we wanted.
        tracing::debug!(pgid, error = %e, "signalling the process group");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let text =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(text).expect("parses");
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn own_stat_is_readable() {
        let s = read_stat(std::process::id()).expect("own stat");
        assert_ne!(s.state, 'Z');
        assert!(group_alive(
            rustix::process::getpgrp()
                .as_raw_nonzero()
                .get()
                .unsigned_abs()
        ));
    }
}
