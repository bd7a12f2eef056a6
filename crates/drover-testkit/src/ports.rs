//! Free loopback ports for test servers, reserved across the test processes of one machine.

use std::io::{ErrorKind, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// How many ports the kernel may offer before giving up on finding an unreserved one.
const ATTEMPTS: usize = 200;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that no other live process
/// got from this function.
///
/// # Guarantees
///
/// - The port was bindable when this function returned.
/// - It is reserved for the calling process until that process exits: a file named after the
///   port, holding the pid, in a directory of the machine's temp dir. Another process calling
///   this function skips it while the holder lives (a stale file of a dead pid is taken over).
///   So a server of one test that is stopped and restarted on its port (an etcd member killed
///   and brought back) does not find the port handed to another test's server meanwhile, as
///   it could when nextest runs tests as parallel processes.
///
/// # Caveats
///
/// The port is not bound between the return and the caller's bind, so a process that does not
/// use this function (or the kernel, for an outgoing connection's ephemeral port) may still
/// take it. Callers that start servers retry with fresh ports when the bind fails
/// ([`EtcdServer::start`](crate::EtcdServer::start) does).
///
/// # Panics
///
/// When no loopback port can be bound at all, or none of [`ATTEMPTS`] offered is unreserved.
pub fn free_port() -> u16 {
    let dir = reservations();
    for _ in 0..ATTEMPTS {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("bound socket has no local address: {e}"))
            .port();
        if reserve(&dir, port) {
            return port;
        }
    }
    panic!(
        "no unreserved loopback port after {ATTEMPTS} tries (see {})",
        dir.display()
    );
}

fn reservations() -> PathBuf {
    let dir = std::env::temp_dir().join("drover-testkit-ports");
    // Shared by every test process (and user) of the machine.
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Claims `port` for this process; false when a live process (this one included) holds it.
fn reserve(dir: &Path, port: u16) -> bool {
    let file = dir.join(port.to_string());
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
        {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return true;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                match holder {
                    Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => return false,
                    // Empty: its holder may be writing its pid right now.
                    None => return false,
                    // Its holder is gone: take it over.
                    Some(_) => {
                        let _ = std::fs::remove_file(&file);
                    }
                }
            }
            // The directory is unusable: fall back to the kernel's word alone.
            Err(_) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("port should still be free");
    }

    #[test]
    fn a_port_is_handed_out_once_while_its_holder_lives() {
        let ports: std::collections::BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        let dir = reservations();
        let held = ports.iter().next().copied().expect("a port");
        assert!(!reserve(&dir, held), "this live process holds it");
    }

    #[test]
    fn a_reservation_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        // No process has pid 0 under /proc.
        std::fs::write(dir.path().join("4242"), "0").expect("write");
        std::fs::write(dir.path().join("4243"), std::process::id().to_string()).expect("write");
        assert!(reserve(dir.path(), 4242));
        assert!(!reserve(dir.path(), 4243));
        assert!(reserve(dir.path(), 4244));
    }
}
