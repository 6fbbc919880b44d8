//! `mfbatch logs FLOW/RUN[/STEP[/TASK]]` and `mfbatch status FLOW/RUN…`: the run's jobs found
//! through Metaflow's metadata. Jobs Batch still knows are followed like `logs JOB_ID`; for jobs
//! it forgot, the log streams the metadata recorded are read directly.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::bootstrap::end_record::PREFIX as END_RECORD;
use mfbatch::error::{AwsError, Service};
use mfbatch::event::{Event, EventSink};
use mfbatch::metadata::read::{self, AttemptInfo, TaskJobs};
use mfbatch::metadata::{Backend, MetadataError, Pathspec};
use mfbatch::settings::{self, Sources};
use mfbatch::track::{FollowRequest, MAX_IDS_PER_CALL};

use super::args::{LogsArgs, Output};
use super::exit;
use super::failure::Failure;
use super::follow::{self, Interrupts, OnInterrupt};
use super::signals::Signals;
use super::Global;

/// The pathspec among the arguments, if any: it must then be the only one.
pub fn pathspec_arg(ids: &[String]) -> Result<Option<Pathspec>, Failure> {
    match ids {
        [one] => Ok(Pathspec::parse(one).transpose()?),
        many if many.iter().any(|i| i.contains('/')) => Err(Failure::usage_message(
            "give either job ids or one FLOW/RUN[/STEP[/TASK]] pathspec",
            None,
        )),
        _ => Ok(None),
    }
}

fn metadata_failure(e: MetadataError) -> Failure {
    let hint = e.hint();
    Failure::new(e, hint, exit::FAILURE)
}

/// The tasks of a pathspec, from the configured metadata.
async fn tasks(spec: &Pathspec) -> Result<(Vec<TaskJobs>, settings::Settings), Failure> {
    let settings = settings::resolve(&Sources::from_process(BTreeMap::new()))?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let backend = Backend::from_settings(&settings, &cwd)?.ok_or_else(|| {
        Failure::usage_message(
            "METAFLOW_DEFAULT_METADATA is none: there is no metadata to find the run in",
            Some("set METAFLOW_DEFAULT_METADATA to service or local".into()),
        )
    })?;
    let found = read::find(&backend, spec).await.map_err(metadata_failure)?;
    Ok((found, settings))
}

async fn known_jobs(clients: &Clients, ids: &[String]) -> Result<Vec<String>, Failure> {
    let mut known = Vec::new();
    for chunk in ids.chunks(MAX_IDS_PER_CALL) {
        let found = mfbatch::track::snapshot::describe(&clients.batch, chunk)
            .await
            .map_err(|e| {
                let hint = e.hint();
                Failure::new(e, hint, exit::FAILURE)
            })?;
        known.extend(found.into_iter().map(|s| s.job_id));
    }
    Ok(known)
}

/// `mfbatch logs FLOW/RUN[/STEP[/TASK]]`.
pub async fn logs(
    spec: Pathspec,
    args: LogsArgs,
    since: Option<i64>,
    global: Global,
) -> Result<u8, Failure> {
    let (tasks, settings) = tasks(&spec).await?;
    let clients = Clients::from_environment(&ClientOptions::default()).await?;
    let ids: Vec<String> = tasks
        .iter()
        .filter_map(|t| t.job_id().map(str::to_owned))
        .collect();
    let known = known_jobs(&clients, &ids).await?;
    let wanted = |a: &AttemptInfo| args.attempt.is_none_or(|n| a.attempt as usize + 1 == n);
    let renderer = follow::renderer(&global, ids.len() > 1, args.timestamps);
    let sink = renderer.sink();
    // Jobs Batch forgot: their recorded streams, read once.
    for task in &tasks {
        let Some(job_id) = task.job_id().filter(|id| !known.iter().any(|k| k == id)) else {
            continue;
        };
        for attempt in task.attempts.iter().filter(|a| wanted(a)) {
            let (Some(group), Some(stream)) = (&attempt.log_group, &attempt.log_stream) else {
                continue;
            };
            read_stream(&clients, job_id, attempt, group, stream, since, &sink)
                .await
                .map_err(|e| Failure::new(e, None, exit::FAILURE))?;
        }
    }
    drop(sink);
    renderer.finish().await;
    let live: Vec<FollowRequest> = known
        .iter()
        .map(|id| FollowRequest {
            attempt: args.attempt,
            logs_since_ms: since,
            once: args.no_follow,
            ..FollowRequest::new(id.clone())
        })
        .collect();
    if live.is_empty() {
        return Ok(exit::SUCCESS);
    }
    let mut signals = Signals::install().map_err(|e| Failure::new(e, None, exit::FAILURE))?;
    follow::follow(
        &clients,
        follow::tracker_config(&settings, clients.region(), None, None)?,
        live,
        follow::renderer(&global, ids.len() > 1, args.timestamps),
        None,
        Interrupts {
            on_interrupt: OnInterrupt::Leave,
            signals: &mut signals,
            already_interrupted: false,
        },
        global,
    )
    .await
}

/// Reads one whole log stream as `Log` events (end records left out).
async fn read_stream(
    clients: &Clients,
    job_id: &str,
    attempt: &AttemptInfo,
    group: &str,
    stream: &str,
    since: Option<i64>,
    sink: &EventSink,
) -> Result<(), AwsError> {
    let mut token: Option<String> = None;
    loop {
        let page = clients
            .logs
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_start_time(since.filter(|_| token.is_none()))
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Service::Logs, "GetLogEvents", e))?;
        for e in page.events() {
            let message = e.message().unwrap_or_default();
            if message.starts_with(END_RECORD) {
                continue;
            }
            sink(Event::Log {
                job_id: job_id.to_owned(),
                job_name: job_id.to_owned(),
                attempt: attempt.attempt as usize + 1,
                timestamp_ms: e.timestamp().unwrap_or_default(),
                message: message.to_owned(),
            });
        }
        let next = page.next_forward_token().map(str::to_owned);
        if next.is_none() || next == token || page.events().is_empty() {
            return Ok(());
        }
        token = next;
    }
}

/// `mfbatch status FLOW/RUN[/STEP[/TASK]]`: each task's job and its status, from Batch when it
/// still knows the job, else from the metadata (`attempt_ok`).
pub async fn status(spec: Pathspec, global: Global) -> Result<u8, Failure> {
    let (tasks, _) = tasks(&spec).await?;
    let clients = Clients::from_environment(&ClientOptions::default()).await?;
    let ids: Vec<String> = tasks
        .iter()
        .filter_map(|t| t.job_id().map(str::to_owned))
        .collect();
    let mut snapshots = Vec::new();
    for chunk in ids.chunks(MAX_IDS_PER_CALL) {
        snapshots.extend(
            mfbatch::track::snapshot::describe(&clients.batch, chunk)
                .await
                .map_err(|e| Failure::new(e, None, exit::FAILURE))?,
        );
    }
    for task in &tasks {
        let job_id = task.job_id().unwrap_or("-");
        let snapshot = snapshots.iter().find(|s| s.job_id == job_id);
        let (status, source) = match snapshot {
            Some(s) => (s.status.to_string(), "batch"),
            None => match task.attempts.last().and_then(|a| a.ok) {
                Some(true) => ("SUCCEEDED".to_owned(), "metadata"),
                Some(false) => ("FAILED".to_owned(), "metadata"),
                None => ("UNKNOWN".to_owned(), "metadata"),
            },
        };
        match global.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({
                    "pathspec": task.pathspec.to_string(),
                    "job_id": task.job_id(),
                    "status": status,
                    "source": source,
                    "attempts": task.attempts.len(),
                })
            ),
            Output::Text => println!(
                "{}  {job_id}  {status:<10} ({source}, {})",
                task.pathspec,
                super::words::count(task.attempts.len(), "attempt")
            ),
        }
    }
    Ok(exit::SUCCESS)
}
