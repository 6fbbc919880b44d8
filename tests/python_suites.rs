//! Runs the project's Python test suites from `cargo test`: the container bootstrap's
//! (`src/bootstrap/test_bootstrap.py`, the program every job runs), the `mfbatch serve` client's
//! (`clients/python/tests`, against a scripted daemon) and the CloudFormation
//! template's (`tests/stack/run.sh`: cfn-lint clean, created and deleted on moto's
//! CloudFormation, the stack a newcomer deploys).

use std::process::Command;

/// Runs `command`, fails on a non-zero exit, and on a unittest run that ran nothing (discovery
/// that silently found no test would pass otherwise).
fn assert_unittest_ran(what: &str, command: &mut Command) {
    let output = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {what} tests: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} tests failed:\n{stderr}");
    let ran = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran > 0, "no {what} test ran:\n{stderr}");
}

#[test]
fn bootstrap_python_tests_pass() {
    let python = std::env::var("MFBATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    assert_unittest_ran(
        "bootstrap",
        Command::new(&python).args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "src/bootstrap",
            "-p",
            "test_*.py",
        ]),
    );
}

#[test]
fn serve_client_python_tests_pass() {
    let python = std::env::var("MFBATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    assert_unittest_ran(
        "serve client",
        Command::new(&python).args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "clients/python/tests",
            "-p",
            "test_*.py",
        ]),
    );
}

#[test]
fn the_template_lints_clean_and_deploys_on_moto() {
    // MFBATCH_MOTO_PYTHON: a python with moto[server] and cfn-lint; else the pinned venv.
    let python = std::env::var("MFBATCH_MOTO_PYTHON").unwrap_or_default();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stack/run.sh");
    assert_unittest_ran("stack", Command::new(script).arg(&python));
}
