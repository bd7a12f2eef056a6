//! The witness: evidence about Drover's copies that Drover does not produce.
//!
//! A workload (`witness report`) sends a datagram every 100 ms while it lives, and one more
//! when a job run finishes its work; a service (`witness serve`), outside Drover's control,
//! stamps each with its own receive time and appends it to a file. [`checker`] reads those
//! records: per task, the intervals with more live copies than allowed (overlap) or fewer than
//! desired (gap), and per job run, runs never done or done twice.
//!
//! - [`datagram`]: the wire format and the recorded line.
//! - [`checker`]: from records to findings; pure.

pub mod checker;
pub mod datagram;
