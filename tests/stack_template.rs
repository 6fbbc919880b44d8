//! Runs the CloudFormation template's tests (`tests/stack/run.sh`: cfn-lint clean, created and
//! deleted on moto's CloudFormation), so `cargo test` covers the stack a newcomer deploys.

use std::process::Command;

#[test]
fn the_template_lints_clean_and_deploys_on_moto() {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = format!("{root}/tests/stack/run.sh");
    // MFBATCH_MOTO_PYTHON: a python with moto[server] and cfn-lint; else the pinned venv.
    let python = std::env::var("MFBATCH_MOTO_PYTHON").unwrap_or_default();
    let output = Command::new(&script)
        .arg(&python)
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stack tests failed:\n{stderr}");
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
    assert!(ran > 0, "no stack test ran:\n{stderr}");
}
