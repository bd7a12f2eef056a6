//! Free loopback ports for test servers.

use std::net::TcpListener;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Guarantees
///
/// The port was bindable when this function returned; the OS hands out ephemeral ports in a
/// rotating order, so it is unlikely to be handed to someone else right away.
///
/// # Caveats
///
/// The port is released before returning, so another process may take it before the caller
/// binds it. Callers that start servers retry with fresh ports when the bind fails
/// ([`EtcdServer::start`](crate::EtcdServer::start) does).
///
/// # Panics
///
/// When no loopback port can be bound at all.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("bound socket has no local address: {e}"))
        .port()
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
}
