//! The fault suite's harness. [`docker`] runs the docker CLI (the only way in: no API client,
//! no registry); [`cli`] is the operator's seat on a host no fault touches; [`cluster`] brings
//! up a cluster of real hosts on a private network and takes it down again, including what an
//! interrupted earlier run left behind; [`report`] turns the figures the scenarios record into
//! the table of `docs/reliability.md`.

pub mod cli;
pub mod cluster;
pub mod docker;
pub mod report;
