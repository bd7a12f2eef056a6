//! The CLI's client verbs speak `drover-api` records and requests: the crate must not grow a
//! dependency on the controller's or the agent's internals again (the daemons live in the
//! `drover` binary crate).

#[test]
fn the_cli_crate_depends_on_neither_controller_nor_agent() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("read Cargo.toml");
    let deps: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("drover-"))
        .filter_map(|line| line.split(['.', ' ', '=']).next())
        .collect();
    assert!(!deps.is_empty(), "no drover-* dependency found: {manifest}");
    for forbidden in ["drover-controller", "drover-agent"] {
        assert!(
            !deps.contains(&forbidden),
            "drover-cli depends on {forbidden}: {deps:?}"
        );
    }
}
