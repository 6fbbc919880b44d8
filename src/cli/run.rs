//! `mfbatch run`: resolve and validate everything, package, then dry-run, submit, or follow.

use std::collections::BTreeMap;

use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::launch::{self, Plan, Prepared};
use mfbatch::settings::{self, Key, Sources};
use mfbatch::spec::{build_spec, RunOptions};

use super::args::{Output, RunArgs};
use std::sync::Arc;

use mfbatch::launch::jobdef::NameValue;
use mfbatch::metadata::recorder::{self, Recorder};

use super::config_cmd;
use super::exit;
use super::failure::Failure;
use super::follow::{self, Interrupts, OnInterrupt};
use super::metadata_cmd;
use super::render::{RenderOptions, Renderer};
use super::signals::Signals;
use super::Global;
use mfbatch::track::array::ArrayFollow;
use mfbatch::track::nodes::NodeFollow;
use mfbatch::track::FollowRequest;

pub async fn run(args: RunArgs, global: Global) -> Result<u8, Failure> {
    // Reading config files and asking the local python3 for its version block: off the
    // async threads.
    let resolved = tokio::task::block_in_place(|| resolve(&args, global))?;
    let Resolved {
        settings,
        spec,
        runnable_warning,
        runnable_timeout,
    } = match resolved {
        Some(resolved) => resolved,
        None => return Ok(exit::SUCCESS), // --show-config
    };
    if spec.batch().is_none() {
        if args.dry_run || args.detach {
            return Err(Failure::usage_message(
                "--dry-run and --detach are for AWS Batch jobs, not --local",
                None,
            ));
        }
        return run_local(spec, global).await;
    }
    let metadata = metadata_cmd::plan_run(&args, &settings)?;
    let clients = Clients::from_environment(&ClientOptions {
        s3_endpoint_url: spec.batch().and_then(|b| b.s3_endpoint_url.clone()),
        max_attempts: None,
    })
    .await?;
    let mut signals = Signals::install().map_err(|e| Failure::new(e, None, exit::FAILURE))?;
    let launched = match launch_batch(
        &args,
        spec,
        &clients,
        metadata.as_ref(),
        &mut signals,
        global,
    )
    .await?
    {
        Launch::Submitted(launched) => launched,
        Launch::Done(code) => return Ok(code),
    };
    let Launched {
        submitted,
        recorder,
        interrupted,
    } = launched;
    if args.detach && !interrupted {
        if global.output == Output::Text {
            println!("{}", submitted.job_id);
        }
        finish_metadata(recorder, metadata.as_ref(), global).await;
        return Ok(exit::SUCCESS);
    }
    let heartbeats = recorder.clone().map(|r| tokio::spawn(r.run_heartbeats()));
    let request = follow_request(&args, submitted.job_id.clone());
    let code = follow::follow(
        &clients,
        follow::tracker_config(
            &settings,
            clients.region(),
            Some(runnable_warning),
            runnable_timeout,
        )?,
        vec![request],
        // Streamed children's lines carry their index.
        follow::renderer(&global, !args.batch.follow_index.is_empty(), false),
        recorder.as_ref().map(|r| r.sink(mfbatch::event::discard())),
        Interrupts {
            on_interrupt: OnInterrupt::StopJobs,
            signals: &mut signals,
            already_interrupted: interrupted,
        },
        global,
    )
    .await;
    heartbeats.inspect(|h| h.abort());
    finish_metadata(recorder, metadata.as_ref(), global).await;
    code
}

/// How `run` follows what it submitted: an array or a multi-node job as one thing, with the
/// flags' knobs (the job's first description says which it is).
fn follow_request(args: &RunArgs, job_id: String) -> FollowRequest {
    FollowRequest {
        array: Some(ArrayFollow {
            show_failed: args.batch.show_failed,
            follow_indexes: args.batch.follow_index.clone(),
            ..ArrayFollow::default()
        }),
        nodes: Some(NodeFollow {
            show_failed: args.batch.show_failed,
            ..NodeFollow::default()
        }),
        ..FollowRequest::new(job_id)
    }
}

/// Everything `run` checks before any AWS call.
struct Resolved {
    settings: settings::Settings,
    spec: mfbatch::spec::JobSpec,
    runnable_warning: std::time::Duration,
    runnable_timeout: Option<std::time::Duration>,
}

/// The settings (flags first) and the validated spec; `None` after `--show-config`.
fn resolve(args: &RunArgs, global: Global) -> Result<Option<Resolved>, Failure> {
    let flags: BTreeMap<Key, String> = [
        (Key::BatchJobQueue, &args.queue),
        (Key::EcsS3AccessIamRole, &args.iam_role),
        (Key::BatchContainerImage, &args.image),
        (Key::EcsFargateExecutionRole, &args.execution_role),
        (Key::DatastoreSysrootS3, &args.datastore_root),
        (
            Key::DefaultMetadata,
            &args.no_metadata.then(|| "none".to_owned()),
        ),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
    .chain(
        args.batch
            .setting_flags()
            .into_iter()
            .map(|(key, value)| (Key::Batch(key), value)),
    )
    .collect();
    let settings = settings::resolve(&Sources::from_process(flags))?;
    config_cmd::warn_ignored_files(&settings, global);
    if args.show_config {
        config_cmd::print(&settings, global.output);
        return Ok(None);
    }
    config_cmd::note_project_settings(&settings, global.style, global.quiet);
    let options = RunOptions {
        script: args.script.clone(),
        root: args.root.clone(),
        args: args.args.clone(),
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        gpu: args.gpu.clone(),
        env: args.env.clone(),
        tags: args.tags.clone(),
        name: args.name.clone(),
        python: args.python.clone(),
        timeout_seconds: args.timeout.clone(),
        retries: args.retries.clone(),
        retry_any_failure: args.retry_any_failure,
        local: args.local,
        extra_suffixes: args.package_suffixes.clone(),
        schedule: args.batch.schedule(),
    };
    let spec = build_spec(&settings, &options)?;
    args.batch
        .check_following(spec.batch().and_then(|b| b.scheduling.array_size()))?;
    let runnable_timeout = args
        .runnable_timeout
        .as_deref()
        .map(|t| parse_duration("--runnable-timeout", t))
        .transpose()?;
    let runnable_warning = parse_duration("--runnable-warning", &args.runnable_warning)?;
    Ok(Some(Resolved {
        settings,
        spec,
        runnable_warning,
        runnable_timeout,
    }))
}

/// How the launch ended: a job to follow, or an exit code (dry run, interrupted before
/// SubmitJob).
enum Launch {
    Submitted(Launched),
    Done(u8),
}

struct Launched {
    submitted: launch::Submitted,
    recorder: Option<Arc<Recorder>>,
    /// A signal came during SubmitJob: act on it now that the job has an id.
    interrupted: bool,
}

/// Package, plan, stage (abandoned on an interrupt: no job exists yet), then SubmitJob.
async fn launch_batch(
    args: &RunArgs,
    spec: mfbatch::spec::JobSpec,
    clients: &Clients,
    metadata: Option<&metadata_cmd::RunMetadata>,
    signals: &mut Signals,
    global: Global,
) -> Result<Launch, Failure> {
    let renderer = Renderer::start(RenderOptions {
        output: global.output,
        quiet: global.quiet,
        style: global.style,
        prefix_jobs: false,
        timestamps: false,
    });
    let events = renderer.sink();
    let recorder_slot: std::sync::Mutex<Option<Arc<Recorder>>> = Default::default();
    // Everything before SubmitJob may be abandoned on an interrupt: what it leaves behind is
    // content-addressed and reused by the next run, and no job exists yet.
    let before_submit = prepare_and_stage(
        args,
        spec,
        clients,
        metadata,
        &recorder_slot,
        &events,
        global,
    );
    let staged = tokio::select! {
        staged = before_submit => Some(staged),
        _ = signals.recv() => None,
    };
    let recorder = recorder_slot.lock().expect("slot").take();
    let mut staged = match staged {
        Some(Ok(BeforeSubmit::Staged(staged))) => staged,
        Some(Ok(BeforeSubmit::DryRun(doc))) => {
            close(renderer, events).await;
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("serializes")
            );
            return Ok(Launch::Done(exit::SUCCESS));
        }
        Some(Err(e)) => {
            recorder.inspect(|r| r.abandon());
            close(renderer, events).await;
            return Err(e.into());
        }
        None => {
            recorder.inspect(|r| r.abandon());
            // An upload cut off mid-way is aborted, so its parts are not kept (and billed).
            mfbatch::launch::store::abort_abandoned_uploads(ABORT_WAIT).await;
            close(renderer, events).await;
            eprintln!("Interrupted before submitting: no job was created.");
            return Ok(Launch::Done(exit::INTERRUPTED));
        }
    };
    if let Some(recorder) = &recorder {
        add_metadata_environment(&mut staged, recorder);
    }
    let events = match &recorder {
        Some(recorder) => recorder.sink(events),
        None => events,
    };
    let submitted = launch::submit(clients, *staged, &events).await;
    let interrupted = signals.arrived().await;
    close(renderer, events).await;
    match submitted {
        Ok(submitted) => Ok(Launch::Submitted(Launched {
            submitted,
            recorder,
            interrupted,
        })),
        Err(e) => {
            recorder.inspect(|r| r.abandon());
            Err(e.into())
        }
    }
}

/// Package, plan, and unless `--dry-run`, stage (the metadata recorder starts in `recorder`
/// before the upload, so its records are sent while the package goes up).
async fn prepare_and_stage(
    args: &RunArgs,
    spec: mfbatch::spec::JobSpec,
    clients: &Clients,
    metadata: Option<&metadata_cmd::RunMetadata>,
    recorder: &std::sync::Mutex<Option<Arc<Recorder>>>,
    events: &mfbatch::event::EventSink,
    global: Global,
) -> Result<BeforeSubmit, launch::LaunchError> {
    let prepared = launch::prepare(spec, events).await?;
    let plan = launch::plan(clients, &prepared).await?;
    for warning in &plan.warnings {
        events(mfbatch::event::Event::Warning(warning.clone()));
    }
    let script = prepared.spec.script.clone();
    let facts = metadata_cmd::facts(&script, &plan, clients.region());
    if args.dry_run {
        let mut doc = dry_run_document(&prepared, &plan);
        if let Some(meta) = metadata {
            doc["metadata"] = serde_json::json!({
                "backend": meta.backend.describe(),
                "records": recorder::dry_run_records(&meta.record, &facts),
            });
        }
        return Ok(BeforeSubmit::DryRun(Box::new(doc)));
    }
    // In the spool before SubmitJob; sent while the package uploads.
    *recorder.lock().expect("slot") =
        metadata.and_then(|meta| metadata_cmd::start(meta, facts, global));
    Ok(BeforeSubmit::Staged(Box::new(
        launch::stage(clients, &prepared, plan, events).await?,
    )))
}

/// The variables the bootstrap needs to record the task's metadata, unless the user set them.
fn add_metadata_environment(staged: &mut launch::Staged, recorder: &Recorder) {
    let environment = &mut staged.submit_job.container_overrides.environment;
    for (name, value) in recorder.job_environment() {
        if !environment.iter().any(|kv| kv.name == name) {
            environment.push(NameValue { name, value });
        }
    }
}

/// Waits a little for the run's records (and any left by earlier commands), then says where
/// they went or how many wait in the spool.
async fn finish_metadata(
    recorder: Option<Arc<Recorder>>,
    metadata: Option<&metadata_cmd::RunMetadata>,
    global: Global,
) {
    let (Some(recorder), Some(meta)) = (recorder, metadata) else {
        return;
    };
    let summary = recorder.finish(metadata_cmd::FINISH_WAIT).await;
    let _ = metadata_cmd::sync_leftovers(
        Some(&meta.backend),
        &meta.spool_dir,
        metadata_cmd::FINISH_WAIT,
    )
    .await;
    metadata_cmd::print_summary(&summary, &meta.spool_dir, global);
}

/// How long an interrupted run waits for S3 to abort its unfinished upload.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes what the renderer has and stops it.
async fn close(renderer: Renderer, events: mfbatch::event::EventSink) {
    drop(events);
    renderer.finish().await;
}

/// What happened before SubmitJob.
enum BeforeSubmit {
    DryRun(Box<serde_json::Value>),
    Staged(Box<launch::Staged>),
}

/// What `--dry-run` prints: the package manifest and the request bodies as they would be sent,
/// except for secrets: environment values are shown through [`settings::redact`].
fn dry_run_document(prepared: &Prepared, plan: &Plan) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "package": {
            "url": plan.package_url,
            "sha256": plan.package_sha256,
            "bytes": plan.package_bytes,
            "alreadyStored": plan.package_present,
            "files": prepared.manifest.files,
            "skipped": prepared.manifest.skipped,
        },
        "queue": plan.queue,
        "jobDefinition": {
            "reused": plan.existing_definition,
            "registerJobDefinition": if plan.existing_definition.is_none() {
                serde_json::to_value(&plan.job_definition).expect("serializes")
            } else {
                serde_json::Value::Null
            },
        },
        "submitJob": plan.submit_job,
        "containerOverridesChars": plan.submit_job.overrides_chars(),
    });
    for pointer in [
        "/submitJob/containerOverrides/environment",
        "/jobDefinition/registerJobDefinition/containerProperties/environment",
    ] {
        if let Some(serde_json::Value::Array(list)) = doc.pointer_mut(pointer) {
            list.iter_mut().for_each(redact_name_value);
        }
    }
    doc
}

/// Redacts one `{"name": …, "value": …}` environment entry in place.
fn redact_name_value(entry: &mut serde_json::Value) {
    let Some(name) = entry
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_owned)
    else {
        return;
    };
    if let Some(value) = entry.get_mut("value") {
        if let Some(text) = value.as_str() {
            *value = settings::redact(&name, text).into();
        }
    }
}

/// Parses `90s`, `10m`, `2h` for a flag.
pub fn parse_duration(flag: &'static str, text: &str) -> Result<std::time::Duration, Failure> {
    humantime::parse_duration(text).map_err(|e| {
        mfbatch::error::ConfigError::InvalidFlag {
            flag,
            value: text.to_owned(),
            reason: format!("{e}; expected a duration such as 90s, 10m or 2h"),
        }
        .into()
    })
}

/// `run --local`: the same package and bootstrap, as a process on this machine.
async fn run_local(spec: mfbatch::spec::JobSpec, global: Global) -> Result<u8, Failure> {
    let renderer = follow::renderer(&global, false, false);
    let events = renderer.sink();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut signals = Signals::install().map_err(|e| Failure::new(e, None, exit::FAILURE))?;
    // Nothing runs yet while packaging, so the first interrupt leaves at once (dropping the
    // future stops the packaging thread too).
    let prepared = tokio::select! {
        prepared = launch::prepare(spec, &events) => Some(prepared),
        _ = signals.recv() => None,
    };
    let prepared = match prepared {
        Some(Ok(prepared)) => prepared,
        Some(Err(e)) => {
            drop(events);
            renderer.finish().await;
            return Err(e.into());
        }
        None => {
            drop(events);
            renderer.finish().await;
            eprintln!("Interrupted while packaging: the step did not start.");
            return Ok(exit::INTERRUPTED);
        }
    };
    let mut interrupted = false;
    // `None`: a second interrupt, leave without waiting for the step.
    let result = {
        let work = async {
            mfbatch::local::run(&prepared, &events, stop_rx)
                .await
                .map_err(|e| Failure::new(e, None, exit::FAILURE))
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => break Some(result),
                _ = signals.recv() => {
                    if interrupted {
                        break None;
                    }
                    interrupted = true;
                    let _ = stop_tx.send(true);
                }
            }
        }
    };
    drop(events);
    renderer.finish().await;
    match result {
        None => Ok(exit::INTERRUPTED),
        Some(result) => {
            let outcome = result?;
            Ok(if interrupted {
                exit::INTERRUPTED
            } else if outcome.succeeded() {
                exit::SUCCESS
            } else {
                exit::for_failed_job(outcome.exit_code)
            })
        }
    }
}
