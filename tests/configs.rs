//! Every example in mount-configs/ is a valid config.

use std::path::Path;

use mirrorfs::config::{Config, Overrides};

#[test]
fn every_example_config_loads_and_resolves() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-configs");
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let raw = Config::read(&path).unwrap_or_else(|error| panic!("{error}"));
        let config = Config::resolve(raw, Overrides::default(), Path::new("/"))
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(config.volume.source.is_absolute());
        assert!(!config.volume.state_dir.starts_with(&config.volume.source));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("failover-") {
            // Three voters each: a majority survives the loss of any one machine.
            assert!(config.failover.is_auto(), "{name}: {:?}", config.failover);
            assert_eq!(config.failover.voters, 3, "{name}");
        }
        loaded.push(name);
    }
    loaded.sort();
    assert!(loaded.len() >= 3, "examples found: {loaded:?}");
    assert!(loaded.contains(&"demo.toml".to_string()));
}
