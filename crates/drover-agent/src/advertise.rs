//! `--advertise-address`: the gRPC address the node key publishes, which `drover logs` and
//! other nodes dial. It is separate from the bind address (`--address`) because an agent bound
//! to every interface (`0.0.0.0`, `::`) has no address of its own to publish.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an `--advertise-address` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The value is empty.
    #[error("must not be empty (expected HOST or HOST:PORT)")]
    Empty,
    /// The host is `0.0.0.0` or `::`, which nobody can dial.
    #[error("{host} is the unspecified address, which nobody can dial: advertise the node's own address or host name")]
    Unspecified {
        /// The host as written.
        host: String,
    },
    /// The host is neither an IP address nor a DNS name.
    #[error("{host:?} is neither an IP address nor a DNS name: {source}")]
    BadHost {
        /// The host as written.
        host: String,
        /// Why it is not a DNS name.
        source: drover_api::names::NameError,
    },
    /// The port is not a number from 1 to 65535.
    #[error("port {port:?} must be a number from 1 to 65535")]
    BadPort {
        /// The port as written.
        port: String,
    },
}

/// An advertised address: a host (IP or DNS name) and, optionally, a port (the bound port when
/// absent). Written `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AdvertiseAddress {
    host: Host,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl AdvertiseAddress {
    /// What the node key publishes for an agent bound to `bound`: this host, with its own port
    /// or else the bound one.
    pub fn with_bound_port(&self, bound: SocketAddr) -> String {
        let port = self.port.unwrap_or(bound.port());
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, port).to_string(),
            Host::Name(name) => format!("{name}:{port}"),
        }
    }
}

/// The address the node key publishes: `advertise` when set, else the bound address.
///
/// # Caveats
/// With no `advertise`, the bound address must not be unspecified; the agent config's
/// `validate` refuses that before anything is bound.
pub fn advertised(advertise: Option<&AdvertiseAddress>, bound: SocketAddr) -> String {
    match advertise {
        Some(a) => a.with_bound_port(bound),
        None => bound.to_string(),
    }
}

fn parse_host(host: &str) -> Result<Host, Error> {
    let ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = ip.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(Error::Unspecified {
                host: host.to_string(),
            });
        }
        return Ok(Host::Ip(ip));
    }
    let name = host.to_ascii_lowercase();
    drover_api::names::validate_subdomain(&name).map_err(|source| Error::BadHost {
        host: host.to_string(),
        source,
    })?;
    Ok(Host::Name(name))
}

fn parse_port(port: &str) -> Result<u16, Error> {
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::BadPort {
            port: port.to_string(),
        })
}

impl FromStr for AdvertiseAddress {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::Empty);
        }
        // A bare IPv6 address has colons but no port.
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(AdvertiseAddress {
                host: parse_host(&ip.to_string())?,
                port: None,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                (host, Some(parse_port(port)?))
            }
            _ => (text, None),
        };
        Ok(AdvertiseAddress {
            host: parse_host(host)?,
            port,
        })
    }
}

impl fmt::Display for AdvertiseAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (Host::Ip(ip), Some(port)) => write!(f, "{}", SocketAddr::new(*ip, port)),
            (Host::Ip(IpAddr::V6(ip)), None) => write!(f, "[{ip}]"),
            (Host::Ip(ip), None) => write!(f, "{ip}"),
            (Host::Name(name), Some(port)) => write!(f, "{name}:{port}"),
            (Host::Name(name), None) => f.write_str(name),
        }
    }
}

impl TryFrom<String> for AdvertiseAddress {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        text.parse()
    }
}

impl From<AdvertiseAddress> for String {
    fn from(a: AdvertiseAddress) -> String {
        a.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 7400))
    }

    fn adv(text: &str) -> String {
        let a: AdvertiseAddress = text.parse().expect("valid");
        assert_eq!(
            a.to_string().parse::<AdvertiseAddress>(),
            Ok(a.clone()),
            "round trip"
        );
        a.with_bound_port(bound())
    }

    #[test]
    fn a_host_alone_takes_the_bound_port() {
        assert_eq!(adv("10.0.0.5"), "10.0.0.5:7400");
        assert_eq!(adv("10.0.0.5:9000"), "10.0.0.5:9000");
        assert_eq!(adv("Node-1.Example.com"), "node-1.example.com:7400");
        assert_eq!(adv("node-1:9000"), "node-1:9000");
        assert_eq!(adv("fd00::1"), "[fd00::1]:7400");
        assert_eq!(adv("[fd00::1]"), "[fd00::1]:7400");
        assert_eq!(adv("[fd00::1]:9000"), "[fd00::1]:9000");
    }

    #[test]
    fn unspecified_hosts_and_bad_ports_are_refused() {
        for text in ["0.0.0.0", "0.0.0.0:7400", "::", "[::]:7400"] {
            assert!(
                matches!(
                    text.parse::<AdvertiseAddress>(),
                    Err(Error::Unspecified { .. })
                ),
                "{text}"
            );
        }
        for text in ["n1:0", "n1:http", "n1:70000", "10.0.0.1:"] {
            assert!(
                matches!(text.parse::<AdvertiseAddress>(), Err(Error::BadPort { .. })),
                "{text}"
            );
        }
        for text in ["under_score", "a..b", "-x"] {
            assert!(
                matches!(text.parse::<AdvertiseAddress>(), Err(Error::BadHost { .. })),
                "{text}"
            );
        }
        assert_eq!("".parse::<AdvertiseAddress>(), Err(Error::Empty));
    }

    #[test]
    fn without_an_advertise_address_the_bound_one_is_published() {
        let bound = SocketAddr::from(([127, 0, 0, 1], 7401));
        assert_eq!(advertised(None, bound), "127.0.0.1:7401");
        let a: AdvertiseAddress = "agent.local".parse().expect("valid");
        assert_eq!(advertised(Some(&a), bound), "agent.local:7401");
        let json = serde_json::to_string(&a).expect("encode");
        assert_eq!(json, "\"agent.local\"");
        assert!(serde_json::from_str::<AdvertiseAddress>("\"0.0.0.0\"").is_err());
    }
}
