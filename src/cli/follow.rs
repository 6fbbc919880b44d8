//! Following jobs from the command line: render their events, turn their outcomes into an exit
//! code, and handle Ctrl-C / SIGTERM (stop the jobs `run` submitted; a second signal leaves at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use mfbatch::aws::Clients;
use mfbatch::event::{Event, EventSink, JobStatus, Outcome};
use mfbatch::settings::{Key, Settings};
use mfbatch::track::{FollowRequest, TrackError, Tracker, TrackerConfig};
use tokio::task::JoinSet;

use super::exit;
use super::failure::Failure;
use super::render::{RenderOptions, Renderer};
use super::report::print_error;
use super::signals::Signals;
use super::style::Style;

/// How interrupts are handled while following.
pub struct Interrupts<'a> {
    pub on_interrupt: OnInterrupt,
    pub signals: &'a mut Signals,
    /// A signal came while the job was being submitted: act on it at once.
    pub already_interrupted: bool,
}

/// What Ctrl-C means while following.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Stop the jobs (they were submitted by this command), then report.
    StopJobs,
    /// Leave the jobs alone and exit.
    Leave,
}

/// Follows the jobs to the end and returns the exit code.
pub async fn follow(
    clients: &Clients,
    config: TrackerConfig,
    requests: Vec<FollowRequest>,
    renderer: Renderer,
    interrupts: Interrupts<'_>,
    style: Style,
) -> Result<u8, Failure> {
    let Interrupts {
        on_interrupt,
        signals,
        already_interrupted,
    } = interrupts;
    let tracker = Tracker::new(clients, config);
    let statuses: Arc<Mutex<HashMap<String, JobStatus>>> = Arc::default();
    let sink = status_recording_sink(renderer.sink(), statuses.clone());
    let mut jobs = JoinSet::new();
    let ids: Vec<String> = requests.iter().map(|r| r.job_id.clone()).collect();
    for request in requests {
        let handle = tracker.follow_with(request, sink.clone());
        jobs.spawn(handle.wait());
    }
    let mut interrupted = false;
    let mut signalled = already_interrupted;
    let mut results: Vec<Result<Outcome, TrackError>> = Vec::new();
    loop {
        if std::mem::take(&mut signalled) {
            if interrupted || on_interrupt == OnInterrupt::Leave {
                drop(sink);
                renderer.finish().await;
                if on_interrupt == OnInterrupt::StopJobs {
                    eprintln!(
                        "Left without waiting; follow later with: mfbatch logs {}",
                        ids.join(" ")
                    );
                }
                return Ok(exit::INTERRUPTED);
            }
            interrupted = true;
            let pending: Vec<(String, Option<JobStatus>)> = {
                let statuses = statuses.lock().expect("status lock");
                ids.iter()
                    .map(|id| (id.clone(), statuses.get(id).copied()))
                    .filter(|(_, s)| !s.is_some_and(JobStatus::is_terminal))
                    .collect()
            };
            for (job_id, status) in pending {
                let reason = "interrupted: stopped by the user with mfbatch".to_owned();
                sink(Event::Terminating {
                    job_id: job_id.clone(),
                    reason: reason.clone(),
                });
                if let Err(e) = tracker.stop(&job_id, status, &reason).await {
                    print_error(&style, &e, e.hint());
                }
            }
            sink(Event::Warning(mfbatch::event::Warning::Notice {
                message: "waiting for the jobs to stop (Ctrl-C again to leave now)".into(),
            }));
        }
        tokio::select! {
            joined = jobs.join_next() => match joined {
                Some(result) => results.push(result.expect("job tasks do not panic")),
                None => break,
            },
            _ = signals.recv() => signalled = true,
        }
    }
    drop(sink);
    renderer.finish().await;
    exit_code(results, interrupted)
}

/// Remembers each job's last status (for choosing CancelJob or TerminateJob), then renders.
fn status_recording_sink(
    inner: EventSink,
    statuses: Arc<Mutex<HashMap<String, JobStatus>>>,
) -> EventSink {
    Arc::new(move |event| {
        if let Event::Status { job_id, status, .. } = &event {
            statuses
                .lock()
                .expect("status lock")
                .insert(job_id.clone(), *status);
        }
        inner(event)
    })
}

/// 0 when every job succeeded; else the first failed job's code; 130 after an interrupt.
fn exit_code(results: Vec<Result<Outcome, TrackError>>, interrupted: bool) -> Result<u8, Failure> {
    let mut code = exit::SUCCESS;
    for result in results {
        match result {
            Ok(outcome) if outcome.succeeded() || !outcome.status.is_terminal() => {}
            Ok(outcome) => {
                if code == exit::SUCCESS {
                    code = exit::for_failed_job(outcome.exit_code);
                }
            }
            Err(err) => {
                let hint = err.hint();
                return Err(Failure::new(err, hint, exit::FAILURE));
            }
        }
    }
    Ok(if interrupted { exit::INTERRUPTED } else { code })
}

/// The tracker's configuration from the settings (`MFBATCH_DRAIN_QUIET_MS`, `MFBATCH_POLL_MIN_MS`)
/// and the command's flags.
pub fn tracker_config(
    settings: &Settings,
    runnable_warning: Option<Duration>,
    runnable_timeout: Option<Duration>,
) -> Result<TrackerConfig, Failure> {
    let mut config = TrackerConfig {
        runnable_timeout,
        ..TrackerConfig::default()
    };
    if let Some(warning) = runnable_warning {
        config.runnable_warning = warning;
    }
    if let Some(quiet) = settings.millis(Key::DrainQuietMs)? {
        config.drain_quiet = quiet;
    }
    if let Some(poll) = settings.millis(Key::PollMinMs)? {
        config.poll_min = poll;
        config.log_min_interval = poll.min(config.log_min_interval);
    }
    Ok(config)
}

/// Starts a renderer with the global choices.
pub fn renderer(global: &super::Global, prefix_jobs: bool, timestamps: bool) -> Renderer {
    Renderer::start(RenderOptions {
        output: global.output,
        quiet: global.quiet,
        style: global.style,
        prefix_jobs,
        timestamps,
    })
}
