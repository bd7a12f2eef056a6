//! The one Prometheus registry of a Drover process: every family under `drover_`, and
//! `drover_build_info{version}` set to 1.
//!
//! Components register their families into it by their own name (`controller_*`, `agent_*`,
//! `store_*`), never with `drover_` again: the registry adds that once. The names, their
//! types and labels are listed in `docs/metrics.md`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The prefix every family of a Drover process carries.
pub const PREFIX: &str = "drover";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// A registry with [`PREFIX`] and `build_info{version}` 1 in it, for one process.
///
/// # Caveats
/// Make one per process and pass it to every component: two registries served side by side
/// would need two scrapes, and a component registered into both would count in one only.
pub fn process_registry(version: &str) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    let build: Family<BuildLabels, Gauge> = Family::default();
    build
        .get_or_create(&BuildLabels {
            version: version.to_string(),
        })
        .set(1);
    registry.register(
        "build_info",
        "Always 1; the label says which Drover version this process runs",
        build,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn build_info_carries_the_version() {
        let registry = process_registry("1.2.3");
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding into a String cannot fail");
        assert!(text.contains("# TYPE drover_build_info gauge\n"), "{text}");
        assert!(
            text.contains(r#"drover_build_info{version="1.2.3"} 1"#),
            "{text}"
        );
    }
}
