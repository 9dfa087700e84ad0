//! Runs each partition example (`examples/partition_heal.rs`,
//! `flaky_network.rs`, `long_partition.rs`) in quick mode and checks that it
//! exits 0 with its checker report and a PASS line.
//!
//! The examples must already be built: `cargo test` without target flags
//! (what `scripts/test` runs) builds them as programs into
//! `target/<profile>/examples/`, beside this test's `deps/` directory. Run
//! alone, build them first with `cargo build --examples --features testing`.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::process::{exited, Guard};
use common::wait::block_on;

/// The examples measure convergence on a small machine: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Generous bound on one quick run.
const DEADLINE: Duration = Duration::from_secs(240);

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/partition_examples-HASH -> target/<profile>/examples/NAME
    let dir = exe.parent().and_then(|d| d.parent()).expect("test binary in target/<profile>/deps").join("examples");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "example binary {} not found: build the examples first (`cargo build --examples --features testing`, or run \
         `cargo test` without target flags, which builds them)",
        path.display()
    );
    path
}

fn run_quick(name: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let path = example(name);
    let out_path = std::env::temp_dir().join(format!("meshcache-{name}-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Guard(
        Command::new(&path)
            .arg("--quick")
            .env("MESHCACHE_QUICK", "1")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display())),
    );
    let status = block_on(exited(&mut child.0, DEADLINE));
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let status = status.unwrap_or_else(|| panic!("{name} did not finish within {DEADLINE:?}:\n{output}"));
    assert!(status.success(), "{name} failed ({status}):\n{output}");
    assert!(output.contains("checker: ") && output.contains(" 0 violation(s)"), "{name}: no checker report:\n{output}");
    assert!(output.lines().any(|l| l == "PASS"), "{name}: no PASS line:\n{output}");
    println!("{output}");
}

#[test]
fn partition_heal_quick() {
    run_quick("partition_heal");
}

#[test]
fn flaky_network_quick() {
    run_quick("flaky_network");
}

#[test]
fn long_partition_quick() {
    run_quick("long_partition");
}
