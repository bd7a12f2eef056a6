//! The fault suite's harness. [`docker`] runs the docker CLI (the only way in: no API client,
//! no registry); [`cluster`] brings up a cluster of real hosts on a private network and takes
//! it down again, including what an interrupted earlier run left behind.

pub mod cluster;
pub mod docker;
