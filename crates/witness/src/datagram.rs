//! The witness's wire format: one UDP datagram per report, plain text so a capture is
//! readable: `v2 <kind> <instance> <host> <pid> <copy> <seq>`. The service records each as a JSON
//! [`Received`] line stamped with its own clock.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The copy is alive (sent every period while it runs).
    Alive,
    /// The copy finished its work (a job run's success), sent once before it exits.
    Done,
}

/// One report from one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram {
    /// Alive or done.
    pub kind: Kind,
    /// The instance id Drover gave the copy (`DROVER_INSTANCE`).
    pub instance: String,
    /// The host (node) it runs on (`DROVER_NODE`).
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// Drawn at random when the copy starts (16 hex digits on the wire): a host restarted
    /// with a fresh pid namespace hands out the same pids again, so host and pid alone do not
    /// tell two copies of one instance apart.
    pub copy: u64,
    /// Counts up from 0 per copy.
    pub seq: u64,
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not `v2` followed by six fields.
    #[error("not a v2 witness datagram (expected `v2 KIND INSTANCE HOST PID COPY SEQ`): {0:?}")]
    Shape(String),
    /// The kind is neither `alive` nor `done`.
    #[error("unknown kind {0:?} (expected alive or done)")]
    Kind(String),
    /// The pid, the copy or the sequence number is not a number.
    #[error("{field} is not a number: {text:?}")]
    Number {
        /// `pid`, `copy` or `seq`.
        field: &'static str,
        /// What was there.
        text: String,
    },
}

impl fmt::Display for Datagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Alive => "alive",
            Kind::Done => "done",
        };
        write!(
            f,
            "v2 {kind} {} {} {} {:016x} {}",
            self.instance, self.host, self.pid, self.copy, self.seq
        )
    }
}

impl Datagram {
    /// Parses a datagram's text.
    pub fn parse(text: &str) -> Result<Datagram, ParseError> {
        let fields: Vec<&str> = text.split_ascii_whitespace().collect();
        let [version, kind, instance, host, pid, copy, seq] = fields[..] else {
            return Err(ParseError::Shape(text.to_string()));
        };
        if version != "v2" {
            return Err(ParseError::Shape(text.to_string()));
        }
        let kind = match kind {
            "alive" => Kind::Alive,
            "done" => Kind::Done,
            other => return Err(ParseError::Kind(other.to_string())),
        };
        let number = |field, text: &str| {
            text.parse::<u64>().map_err(|_| ParseError::Number {
                field,
                text: text.to_string(),
            })
        };
        let pid = u32::try_from(number("pid", pid)?).map_err(|_| ParseError::Number {
            field: "pid",
            text: pid.to_string(),
        })?;
        let copy = u64::from_str_radix(copy, 16).map_err(|_| ParseError::Number {
            field: "copy",
            text: copy.to_string(),
        })?;
        Ok(Datagram {
            kind,
            instance: instance.to_string(),
            host: host.to_string(),
            pid,
            copy,
            seq: number("seq", seq)?,
        })
    }
}

/// A datagram as the service recorded it: with the service's receive time, in milliseconds
/// since the Unix epoch (one clock for every report, whatever host sent it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// When the service received it.
    pub at_ms: i64,
    /// What it said.
    #[serde(flatten)]
    pub datagram: Datagram,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_a_datagram() {
        let d = Datagram {
            kind: Kind::Done,
            instance: "default.batch.r3.0".into(),
            host: "agent-2".into(),
            pid: 41,
            copy: 0x00c0_ffee_0000_0001,
            seq: 17,
        };
        assert_eq!(
            d.to_string(),
            "v2 done default.batch.r3.0 agent-2 41 00c0ffee00000001 17"
        );
        assert_eq!(Datagram::parse(&d.to_string()).unwrap(), d);
        assert!(matches!(
            Datagram::parse("v1 alive a b 1 2"),
            Err(ParseError::Shape(_))
        ));
        assert!(matches!(
            Datagram::parse("v3 alive a b 1 ff 2"),
            Err(ParseError::Shape(_))
        ));
        assert!(matches!(
            Datagram::parse("v2 dead a b 1 ff 2"),
            Err(ParseError::Kind(_))
        ));
        assert!(matches!(
            Datagram::parse("v2 alive a b x ff 2"),
            Err(ParseError::Number { field: "pid", .. })
        ));
        assert!(matches!(
            Datagram::parse("v2 alive a b 1 zz 2"),
            Err(ParseError::Number { field: "copy", .. })
        ));
        assert!(Datagram::parse("").is_err());
    }

    #[test]
    fn a_received_line_is_flat_json() {
        let r = Received {
            at_ms: 5,
            datagram: Datagram::parse("v2 alive default.web.0 h 1 a 0").unwrap(),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"at_ms":5,"kind":"alive","instance":"default.web.0","host":"h","pid":1,"copy":10,"seq":0}"#
        );
        assert_eq!(serde_json::from_str::<Received>(&line).unwrap(), r);
    }
}
