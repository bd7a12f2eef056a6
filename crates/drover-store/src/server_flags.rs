//! The etcd server flags every etcd that Drover starts itself gets (`drover up`, `bench scale`,
//! the test kit, `hack/etcd.sh`): settings of the server, not of this client.

/// Commit etcd's backend every 10 ms instead of its default 100 ms.
///
/// On etcd 3.4 every read and every lease keep-alive answer copies the server's uncommitted
/// write buffer, which holds every write since the last backend commit: the header of each
/// answer asks the store for its revision through a read transaction that copies the buffer
/// (etcd-io/etcd#20184; sharing one buffer, etcd-io/etcd#12933, landed only in 3.5). With
/// 2,000 nodes renewing their leases every TTL/6 during a burst of placements, those copies
/// took a third of etcd's CPU before garbage collection (profiled with etcd's
/// `--enable-pprof`). A buffer ten times shorter makes each copy ten times smaller, and
/// placement rates rose by 1.5-2.5x in `drover bench scale` (docs/benchmarks.md). The cost is
/// more frequent backend commits: each is an `fdatasync` of the bolt file, at most 100 a
/// second, and only while writes arrive.
pub const BACKEND_BATCH_INTERVAL: &str = "--backend-batch-interval=10ms";

/// [`BACKEND_BATCH_INTERVAL`] and any other server flag Drover's own etcd processes get.
pub const ETCD_SERVER_FLAGS: &[&str] = &[BACKEND_BATCH_INTERVAL];
