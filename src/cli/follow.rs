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

/// How often `--output json` reports the tracker's statistics.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// After the first Ctrl-C, how long to keep showing the jobs' last lines while they stop.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Follows the jobs to the end and returns the exit code.
pub async fn follow(
    clients: &Clients,
    config: TrackerConfig,
    requests: Vec<FollowRequest>,
    renderer: Renderer,
    observer: Option<EventSink>,
    interrupts: Interrupts<'_>,
    global: super::Global,
) -> Result<u8, Failure> {
    let Interrupts {
        on_interrupt,
        signals,
        already_interrupted,
    } = interrupts;
    let tracker = Tracker::new(clients, config);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = observed(recording_sink(renderer.sink(), seen.clone()), observer);
    let mut jobs = JoinSet::new();
    let ids: Vec<String> = requests.iter().map(|r| r.job_id.clone()).collect();
    for request in requests {
        let handle = tracker.follow_with(request, sink.clone());
        jobs.spawn(handle.wait());
    }
    let mut stopping: Option<Stopping> = None;
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_EVERY,
        HEARTBEAT_EVERY,
    );
    let mut signalled = already_interrupted;
    let mut results: Vec<Result<Outcome, TrackError>> = Vec::new();
    loop {
        if std::mem::take(&mut signalled) {
            if stopping.is_some() || on_interrupt == OnInterrupt::Leave {
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
            stopping = Some(start_stopping(&tracker, &ids, &seen, &sink));
        }
        if stopping.as_ref().is_some_and(|stop| stop.over(&ids, &seen)) {
            break;
        }
        let deadline = stopping.as_ref().map(|s| s.deadline);
        let stop_calls = stopping.as_mut().map(|s| &mut s.calls);
        tokio::select! {
            joined = jobs.join_next() => match joined {
                Some(result) => results.push(result.expect("job tasks do not panic")),
                None => break,
            },
            _ = signals.recv() => signalled = true,
            // Programs see what the tracker is doing: which path reads the logs, the lag, calls.
            _ = heartbeat.tick(), if global.output == super::args::Output::Json => {
                sink(Event::Heartbeat(tracker.stats()));
            }
            // Seen events (end records) are checked at the top of the loop.
            _ = tokio::time::sleep(Duration::from_millis(50)), if deadline.is_some() => {}
            Some(done) = async {
                match stop_calls {
                    Some(calls) if !calls.is_empty() => calls.join_next().await,
                    _ => std::future::pending().await,
                }
            } => {
                if let Ok((_, Err(e))) = done {
                    print_error(&global, &e, e.hint());
                }
            }
        }
    }
    drop(sink);
    renderer.finish().await;
    if stopping.is_some() {
        say_how_the_stop_went(&ids, &seen.lock().expect("seen lock"));
        return Ok(exit::INTERRUPTED);
    }
    exit_code(results, false)
}

/// The observer (the metadata recorder) sees each event before it is rendered.
fn observed(sink: EventSink, observer: Option<EventSink>) -> EventSink {
    match observer {
        Some(observer) => Arc::new(move |event: Event| {
            observer(event.clone());
            sink(event)
        }),
        None => sink,
    }
}

/// After Ctrl-C: whether each job was seen to stop, and how to watch the ones that were not.
fn say_how_the_stop_went(ids: &[String], seen: &Seen) {
    let running: Vec<&str> = ids
        .iter()
        .filter(|id| !seen.stopped(id))
        .map(String::as_str)
        .collect();
    if running.is_empty() {
        eprintln!("Stopped: {}", seen.describe_stops(ids));
        return;
    }
    // A container gets up to 30 s after SIGTERM; a job that never started only waits for Batch.
    let started = running.iter().any(|id| {
        seen.statuses
            .get(*id)
            .is_some_and(|s| *s >= JobStatus::Starting)
    });
    let why = if started {
        "the container may take up to 30 s more"
    } else {
        "Batch has not yet marked it stopped"
    };
    eprintln!(
        "Not yet seen to stop after {}s ({why}): {}\n  watch with: mfbatch status {}",
        STOP_GRACE.as_secs(),
        running.join(" "),
        running.join(" ")
    );
}

/// The first interrupt: stop calls are sent at once, in the background, so that a second
/// interrupt is heard even while one hangs.
struct Stopping {
    deadline: tokio::time::Instant,
    calls: JoinSet<(String, Result<(), mfbatch::error::AwsError>)>,
}

impl Stopping {
    /// Every job was seen to stop, or the grace is over.
    fn over(&self, ids: &[String], seen: &Mutex<Seen>) -> bool {
        let seen = seen.lock().expect("seen lock");
        ids.iter().all(|id| seen.stopped(id)) || tokio::time::Instant::now() >= self.deadline
    }
}

fn start_stopping(
    tracker: &Tracker,
    ids: &[String],
    seen: &Mutex<Seen>,
    sink: &EventSink,
) -> Stopping {
    let mut calls = JoinSet::new();
    let pending: Vec<(String, Option<JobStatus>)> = {
        let seen = seen.lock().expect("seen lock");
        ids.iter()
            .filter(|id| !seen.stopped(id))
            .map(|id| (id.clone(), seen.statuses.get(id).copied()))
            .collect()
    };
    for (job_id, status) in pending {
        let reason = "interrupted: stopped by the user with mfbatch".to_owned();
        sink(Event::Terminating {
            job_id: job_id.clone(),
            reason: reason.clone(),
        });
        let tracker = tracker.clone();
        calls.spawn(async move {
            let result = tracker.stop(&job_id, status, &reason).await;
            (job_id, result)
        });
    }
    sink(Event::Warning(mfbatch::event::Warning::Notice {
        message: format!(
            "waiting up to {}s for the jobs to stop (Ctrl-C again to leave now)",
            STOP_GRACE.as_secs()
        ),
    }));
    Stopping {
        deadline: tokio::time::Instant::now() + STOP_GRACE,
        calls,
    }
}

/// What the jobs' events said so far: each job's last status (for choosing CancelJob or
/// TerminateJob) and whether its step was seen to exit.
#[derive(Default)]
struct Seen {
    statuses: HashMap<String, JobStatus>,
    step_exits: HashMap<String, i32>,
}

impl Seen {
    fn stopped(&self, id: &str) -> bool {
        self.step_exits.contains_key(id) || self.statuses.get(id).is_some_and(|s| s.is_terminal())
    }

    fn describe_stops(&self, ids: &[String]) -> String {
        ids.iter()
            .map(
                |id| match (self.step_exits.get(id), self.statuses.get(id)) {
                    (Some(code), _) => format!("{id} (step exited {code})"),
                    (None, Some(status)) => format!("{id} ({status})"),
                    (None, None) => id.clone(),
                },
            )
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Records what [`Seen`] needs, then renders.
fn recording_sink(inner: EventSink, seen: Arc<Mutex<Seen>>) -> EventSink {
    Arc::new(move |event| {
        match &event {
            Event::Status { job_id, status, .. } => {
                seen.lock()
                    .expect("seen lock")
                    .statuses
                    .insert(job_id.clone(), *status);
            }
            Event::StepExited { job_id, end, .. } => {
                seen.lock()
                    .expect("seen lock")
                    .step_exits
                    .insert(job_id.clone(), end.exit_code);
            }
            _ => {}
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
    region: &str,
    runnable_warning: Option<Duration>,
    runnable_timeout: Option<Duration>,
) -> Result<TrackerConfig, Failure> {
    let mut config = TrackerConfig {
        runnable_timeout,
        ..TrackerConfig::for_region(region)
    };
    if let Some(rate) = settings.per_second(Key::GetLogEventsPerSecond)? {
        config.logs_calls_per_second = rate;
        config.batched_above = (rate * 5.0) as usize;
    }
    if let Some(rate) = settings.per_second(Key::FilterLogEventsPerSecond)? {
        config.filter_calls_per_second = rate;
    }
    if let Some(mode) = settings.log_mode()? {
        config.log_mode = mode;
    }
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
