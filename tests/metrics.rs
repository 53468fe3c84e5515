//! Prometheus metrics of a live mount (with a replica and its read cache) and of its
//! replica node: the scrape passes `promtool check metrics`, and its figures are the ones
//! `mirrorfs status --json` and `replica status --json` give.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::replica::{Node, key_file, replicated_mount, wait_replicated};

/// The address a daemon's log says it serves metrics at.
fn metrics_address(log: &str) -> String {
    log.lines()
        .find(|line| line.contains("serving metrics"))
        .and_then(|line| line.split("address=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
}

/// GET `path` from `address`: the status line and the body.
fn get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The samples of a scrape, by name with labels (`name{label="value"}`).
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// `promtool check metrics` on `body`: its complaints, if any.
fn promtool(body: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-deps.sh --test installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    match output.status.success() && said.trim().is_empty() {
        true => Ok(()),
        false => Err(said),
    }
}

#[test]
fn a_scrape_passes_promtool_and_agrees_with_status() {
    let scratch = common::scratch();
    let (key, _) = key_file(scratch.path(), "vol.key");
    let node_dir = scratch.path().join("node");
    fs::create_dir(&node_dir).unwrap();
    let node = Node::start_configured(
        None,
        &node_dir,
        "127.0.0.1:0",
        &[("vol", &key)],
        "metrics_listen = \"127.0.0.1:0\"\n",
    );
    let mount = replicated_mount(
        "vol",
        &key,
        &[&node],
        "acks = \"all\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[write]\nmode = \"write-behind\"\n",
    );
    for n in 0..20 {
        fs::write(mount.path(&format!("f{n}")), vec![n as u8; 10_000]).unwrap();
    }
    for n in 0..20 {
        assert_eq!(
            fs::read(mount.path(&format!("f{n}"))).unwrap().len(),
            10_000
        );
    }
    wait_replicated(&mount);
    let verified = common::run(&["verify", mount.mountpoint.to_str().unwrap()]);
    assert!(verified.status.success(), "{verified:?}");

    let address = metrics_address(&mount.log());
    let (status_line, body) = get(&address, "/metrics");
    assert!(status_line.contains("200"), "{status_line}");
    promtool(&body).unwrap_or_else(|said| panic!("promtool: {said}\n{body}"));
    let scraped = samples(&body);
    let status = mount.status_json();
    let value = |name: &str| {
        *scraped
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    let figure = |value: &serde_json::Value| value.as_u64().unwrap() as f64;
    assert_eq!(value("mirrorfs_up"), 1.0);
    assert_eq!(
        value("mirrorfs_log_next_offset"),
        figure(&status["log"]["next_offset"])
    );
    assert_eq!(
        value("mirrorfs_log_durable_offset"),
        figure(&status["log"]["durable_offset"])
    );
    let replication = &status["replication"];
    assert_eq!(
        value("mirrorfs_replication_high_watermark"),
        figure(&replication["high_watermark"])
    );
    assert_eq!(value("mirrorfs_replication_replicas_in_sync"), 1.0);
    assert_eq!(
        value("mirrorfs_replica_acknowledged_offset{replica=\"r0\"}"),
        figure(&replication["replicas"][0]["acknowledged"])
    );
    assert_eq!(value("mirrorfs_replica_lag_records{replica=\"r0\"}"), 0.0);
    let memory = &status["cache"]["memory"];
    assert_eq!(
        value("mirrorfs_cache_hits_total{tier=\"memory\"}"),
        figure(&memory["hits"])
    );
    assert_eq!(
        value("mirrorfs_cache_bytes{tier=\"memory\"}"),
        figure(&memory["bytes"])
    );
    assert!(value("mirrorfs_fuse_request_duration_seconds_count{op=\"write\"}") >= 20.0);
    assert!(value("mirrorfs_fuse_request_duration_seconds_count{op=\"create\"}") >= 20.0);
    let (not_found, _) = get(&address, "/nothing");
    assert!(not_found.contains("404"), "{not_found}");

    let node_address = metrics_address(&node.log());
    let (_, node_body) = get(&node_address, "/metrics");
    promtool(&node_body).unwrap_or_else(|said| panic!("promtool (node): {said}\n{node_body}"));
    let node_scraped = samples(&node_body);
    assert_eq!(
        node_scraped["mirrorfs_copy_next_offset{volume=\"vol\"}"],
        figure(&status["log"]["next_offset"]),
        "{node_body}"
    );
    assert_eq!(node_scraped["mirrorfs_copy_connected{volume=\"vol\"}"], 1.0);

    // The dashboard asks only for what a mount or a node exports.
    let dashboard: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dashboards/mirrorfs.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let exported = |name: &str| {
        scraped
            .keys()
            .chain(node_scraped.keys())
            .any(|sample| sample.split('{').next() == Some(name))
    };
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("mirrorfs_"))
            {
                asked += 1;
                assert!(
                    exported(name),
                    "the dashboard asks for {name}, which nothing exports"
                );
            }
        }
    }
    assert!(asked > 10, "{asked}");
}

#[test]
fn a_metrics_address_that_cannot_be_used_refuses_the_mount_in_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = common::scratch();
    let config = dir.path().join("m.toml");
    fs::write(&config, format!("[metrics]\nlisten = \"{address}\"\n")).unwrap();
    fs::create_dir(dir.path().join("o")).unwrap();
    fs::create_dir(dir.path().join("m")).unwrap();
    let state = dir.path().join("state");
    let output = common::run(&[
        "mount",
        dir.path().join("o").to_str().unwrap(),
        dir.path().join("m").to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("metrics.listen"), "{stderr}");
    fs::write(&config, "[metrics]\nlisten = \"port 80\"\n").unwrap();
    let output = common::run(&[
        "mount",
        dir.path().join("o").to_str().unwrap(),
        dir.path().join("m").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        stderr.contains("metrics.listen") && stderr.contains("127.0.0.1:9464"),
        "{stderr}"
    );
}
