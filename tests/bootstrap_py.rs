//! Runs the container bootstrap's own Python test suite (`src/bootstrap/test_bootstrap.py`), so
//! `cargo test` covers the program every job runs.

use std::process::Command;

#[test]
fn bootstrap_python_tests_pass() {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = std::env::var("MFBATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "src/bootstrap",
            "-p",
            "test_*.py",
        ])
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (set MFBATCH_TEST_PYTHON): {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bootstrap tests failed:\n{stderr}");
    // unittest reports "Ran N tests"; zero would mean discovery silently found nothing.
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
    assert!(ran > 0, "no bootstrap test ran:\n{stderr}");
}
