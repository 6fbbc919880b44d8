//! Metaflow metadata from the command line: what `run` records (flow, run, step from the flags
//! or the script's name), its summary line, and `mfbatch metadata sync`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mfbatch::error::ConfigError;
use mfbatch::launch::{jobdef::Platform, Plan};
use mfbatch::metadata::model::{now_ms, TaskRecord};
use mfbatch::metadata::recorder::{self, JobFacts, Recorder, Summary};
use mfbatch::metadata::spool::{self, Backoff, SyncReport};
use mfbatch::metadata::{is_id, is_name, Backend};
use mfbatch::settings::{self, Key, Settings, Sources};

use super::args::{MetadataCommand, RunArgs};
use super::exit;
use super::failure::Failure;
use super::Global;

/// How long `run` waits at its end for its records to be sent before leaving them in the spool.
pub const FINISH_WAIT: Duration = Duration::from_secs(5);

/// What `run` will record, decided (and checked) before any AWS call.
pub struct RunMetadata {
    pub backend: Backend,
    pub record: TaskRecord,
    pub spool_dir: PathBuf,
}

/// The run's record from the flags and settings; `None` when metadata is off.
pub fn plan_run(args: &RunArgs, settings: &Settings) -> Result<Option<RunMetadata>, Failure> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let Some(backend) = Backend::from_settings(settings, &cwd)? else {
        return Ok(None);
    };
    let stem = args
        .script
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let step = identifier(&stem);
    let flow = format!("{}Flow", camel_case(&step));
    let check = |flag: &'static str, value: Option<&String>, ok: fn(&str) -> bool, what: &str| {
        match value {
            Some(v) if !ok(v) => Err(ConfigError::InvalidFlag {
                flag,
                value: v.clone(),
                reason: what.to_owned(),
            }),
            _ => Ok(value.cloned()),
        }
    };
    let name_rule = "a Metaflow name: letters, digits and '_', not starting with a digit";
    let flow = check("--flow", args.flow.as_ref(), is_name, name_rule)?.unwrap_or(flow);
    let step = check("--step", args.step.as_ref(), is_name, name_rule)?.unwrap_or(step);
    let id_rule = "a run id is letters, digits, '_' and '-'";
    let run_id = check("--run-id", args.run_id.as_ref(), is_id, id_rule)?;
    let user = settings.get(Key::User).unwrap_or("unknown").to_owned();
    let env = settings::utf8_environment(std::env::vars_os());
    let spool_dir = spool::default_dir(&env).ok_or_else(|| {
        Failure::usage_message(
            "cannot place the metadata spool: neither XDG_CACHE_HOME nor HOME is set",
            Some("set HOME, or pass --no-metadata".into()),
        )
    })?;
    Ok(Some(RunMetadata {
        backend,
        record: TaskRecord {
            flow,
            step,
            system_tags: recorder::system_tags(&user),
            user,
            run_id,
            task_id: None,
            ts_epoch: now_ms(),
            tags: Vec::new(),
        },
        spool_dir,
    }))
}

/// `train-model` → `train_model`; a name that starts with a digit gets a leading `_`.
fn identifier(stem: &str) -> String {
    let mut out: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// `train_model` → `TrainModel`.
fn camel_case(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect()
}

/// What the plan tells about the job, for its metadata.
pub fn facts(script: &str, plan: &Plan, region: &str) -> JobFacts {
    let ces = &plan.queue.compute_environments;
    JobFacts {
        script: script.to_owned(),
        queue: plan.submit_job.job_queue.clone(),
        region: region.to_owned(),
        execution_env: match plan.queue.platform() {
            Platform::Fargate => "AWS_ECS_FARGATE",
            Platform::Ec2 => "AWS_ECS_EC2",
        }
        .to_owned(),
        compute_environment: (ces.len() == 1).then(|| ces[0].name.clone()),
        package_sha256: plan.package_sha256.clone(),
        package_url: plan.package_url.clone(),
    }
}

/// Starts recording; a spool that cannot be written is a warning, never the job's failure.
pub fn start(meta: &RunMetadata, facts: JobFacts, global: Global) -> Option<Arc<Recorder>> {
    match Recorder::start(
        &meta.backend,
        &meta.spool_dir,
        meta.record.clone(),
        facts,
        Backoff::default(),
    ) {
        Ok(recorder) => Some(recorder),
        Err(e) => {
            let line = spool::error_line(&e);
            eprintln!(
                "{} not recording in Metaflow: {line}",
                global.style.warning("warning:")
            );
            None
        }
    }
}

/// The run's metadata line: where it was recorded, or how many records wait in the spool.
pub fn print_summary(summary: &Summary, spool_dir: &Path, global: Global) {
    if global.output == super::args::Output::Json {
        // With the run's events on stdout, where programs read them.
        let event = serde_json::json!({
            "event": "metadata",
            "pathspec": summary.pathspec,
            "backend": summary.backend,
            "pending": summary.pending,
            "spool": (summary.pending > 0).then(|| spool_dir.display().to_string()),
            "last_error": summary.last_error,
        });
        println!("{event}");
        return;
    }
    if summary.pending == 0 {
        if !global.quiet {
            eprintln!(
                "{}",
                global.style.dim(&format!(
                    "Recorded as {} in {}",
                    summary.pathspec, summary.backend
                ))
            );
        }
        return;
    }
    eprintln!(
        "{} {} metadata records pending for {} in {} ({}); `mfbatch metadata sync` or the next mfbatch command sends them",
        global.style.warning("warning:"),
        summary.pending,
        summary.pathspec,
        spool_dir.display(),
        summary.last_error.as_deref().unwrap_or("not sent yet"),
    );
}

/// Sends what earlier commands left in the spool, for up to `wait`.
pub async fn sync_leftovers(
    backend: Option<&Backend>,
    spool_dir: &Path,
    wait: Duration,
) -> SyncReport {
    let deadline = tokio::time::Instant::now() + wait;
    spool::sync_dir(spool_dir, backend, deadline, Backoff::default()).await
}

/// `mfbatch metadata sync`.
pub async fn command(command: MetadataCommand, global: Global) -> Result<u8, Failure> {
    let MetadataCommand::Sync = command;
    let settings = settings::resolve(&Sources::from_process(BTreeMap::new()))?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let backend = Backend::from_settings(&settings, &cwd)?;
    let env = settings::utf8_environment(std::env::vars_os());
    let Some(dir) = spool::default_dir(&env) else {
        return Err(Failure::usage_message(
            "neither XDG_CACHE_HOME nor HOME is set",
            None,
        ));
    };
    let report = sync_leftovers(backend.as_ref(), &dir, Duration::from_secs(60)).await;
    for error in &report.errors {
        eprintln!("{} {error}", global.style.error("error:"));
    }
    match global.output {
        super::args::Output::Json => println!(
            "{}",
            serde_json::json!({"sent": report.sent, "pending": report.pending, "busy": report.busy})
        ),
        super::args::Output::Text => eprintln!(
            "Sent {} spooled jobs' records; {} records pending{}",
            report.sent,
            report.pending,
            if report.busy > 0 {
                format!(
                    ", {} being written by running mfbatch commands",
                    report.busy
                )
            } else {
                String::new()
            }
        ),
    }
    Ok(if report.pending == 0 && report.errors.is_empty() {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_script() {
        assert_eq!(identifier("train-model"), "train_model");
        assert_eq!(identifier("2step"), "_2step");
        assert_eq!(camel_case("train_model"), "TrainModel");
        assert_eq!(
            format!("{}Flow", camel_case(&identifier("hello"))),
            "HelloFlow"
        );
    }
}
