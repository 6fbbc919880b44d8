//! `mfbatch doctor`: one line per check (✓ pass, ✗ fail with its fix, - skipped with why), or the
//! report as JSON; exit 0 when nothing failed, 1 otherwise.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Args;
use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::doctor::{self, DoctorOptions, Status};
use mfbatch::settings::{self, Key, Sources};
use mfbatch::spec::{MemoryMib, Resources, Vcpu};

use super::args::Output;
use super::exit;
use super::failure::Failure;
use super::Global;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check the queue has room for jobs of this many vCPUs (default: run's, 1).
    #[arg(long, value_name = "N")]
    pub cpu: Option<String>,
    /// Memory of the jobs to expect, in MiB (default: run's, 4096).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<String>,
}

pub async fn run(args: DoctorArgs, global: Global) -> Result<u8, Failure> {
    let mut resources = Resources::default();
    if let Some(cpu) = &args.cpu {
        resources.vcpu = Vcpu::parse("--cpu", cpu)?;
    }
    if let Some(memory) = &args.memory {
        resources.memory = MemoryMib::parse("--memory", memory)?;
    }
    // The same resolution and client setup as `run`, so the doctor sees what a run would.
    let settings = settings::resolve(&Sources::from_process(BTreeMap::new()));
    let s3_endpoint_url = settings
        .as_ref()
        .ok()
        .and_then(|s| s.get(Key::S3EndpointUrl))
        .map(str::to_owned);
    let clients = Clients::from_environment(&ClientOptions {
        s3_endpoint_url,
        max_attempts: Some(2),
    })
    .await;
    let report = doctor::run(
        settings.as_ref(),
        clients.as_ref(),
        &DoctorOptions { resources },
    )
    .await;

    let mut out = std::io::stdout().lock();
    if global.output == Output::Json {
        let value = serde_json::json!({"ok": report.ok(), "checks": report.checks});
        let _ = writeln!(out, "{value}");
    } else {
        let style = global.style;
        let width = report
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        for check in &report.checks {
            let (mark, detail) = match check.status {
                Status::Pass => (style.ok("✓"), check.detail.clone()),
                Status::Fail => (style.error("✗"), check.detail.clone()),
                Status::Skipped => (style.dim("-"), format!("skipped: {}", check.detail)),
            };
            let _ = writeln!(out, "{mark} {:width$}  {detail}", check.name);
            if let Some(fix) = &check.fix {
                let _ = writeln!(out, "  {:width$}  {} {fix}", "", style.hint("fix:"));
            }
        }
    }
    let _ = out.flush();
    let failed = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .count();
    if global.output == Output::Text && !global.quiet {
        if failed == 0 {
            eprintln!("All checks passed: `mfbatch run step.py` should work.");
        } else {
            eprintln!("{} failed.", super::words::count(failed, "check"));
        }
    }
    Ok(if failed == 0 {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}
