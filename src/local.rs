//! The local backend: runs a job's package through the same bootstrap as a Batch container, as
//! a process on this machine, with its output coming back as the same events.
//!
//! The package goes to a local datastore directory (content-addressed like S3), so no AWS
//! account, configuration or credentials are involved.

use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bootstrap;
use crate::bootstrap::end_record::{EndRecord, EndRecords};
use crate::event::{Event, EventSink, JobStatus, Outcome};
use crate::launch::environment;
use crate::launch::store::{LocalStore, PackageStore, StoreError};
use crate::launch::Prepared;
use crate::spec::Target;
use crate::track::snapshot::JobSnapshot;

/// Why a local run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    #[error("cannot store the code package")]
    Store(#[from] StoreError),
    #[error("cannot start `sh` to run the bootstrap")]
    Spawn(#[source] std::io::Error),
    #[error("lost the job's output")]
    Output(#[source] std::io::Error),
    #[error("cannot create the job's work directory")]
    WorkDir(#[source] std::io::Error),
    #[error("the job is for AWS Batch, not for this machine")]
    NotLocal,
}

/// Runs the prepared job locally until it exits; `stop` turning true sends it SIGTERM.
pub async fn run(
    prepared: &Prepared,
    events: &EventSink,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, LocalError> {
    let Target::Local(target) = &prepared.spec.target else {
        return Err(LocalError::NotLocal);
    };
    let url = store_package(prepared, &target.datastore_dir, events).await?;
    let job = LocalJob {
        id: format!(
            "local-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        ),
        name: prepared.spec.name.to_string(),
        events: events.clone(),
    };
    let invocation = environment::invocation(prepared, &url);
    let resources = &prepared.spec.resources;
    job.notice(format!(
        "Running on this machine; the job asks for {} vCPU and {} MiB{} (given to it as MFBATCH_CPU / MFBATCH_MEMORY_MIB, not enforced)",
        resources.vcpu,
        resources.memory.get(),
        if resources.gpu > 0 { format!(" and {} GPU", resources.gpu) } else { String::new() }
    ));
    let env = environment::job_environment(
        &prepared.spec,
        &invocation,
        environment::local_additions(&job.id, resources),
    );
    // The bootstrap's work directory lives in one of ours, removed however the run ends (a
    // second Ctrl-C kills the step before it can clean up).
    let work_parent = tempfile::Builder::new()
        .prefix("mfbatch-local-")
        .tempdir()
        .map_err(LocalError::WorkDir)?;
    let mut child = spawn(env, work_parent.path())?;
    let group = ProcessGroup(child.id());
    job.started();
    let started = Instant::now();
    let stdout = child.stdout.take().expect("stdout is piped");
    let (records, stopping) = job
        .pump_output(stdout, &invocation.end_nonce, &child, &mut stop)
        .await?;
    let status = child.wait().await.map_err(LocalError::Output)?;
    // The bootstrap has exited: whatever is left of its group must not outlive the job.
    drop(group);
    let exit_code = status.code().or_else(|| signal_code(&status)).unwrap_or(1);
    let outcome = job.finish(
        exit_code,
        records.any(),
        stopping,
        started,
        invocation.end_nonce,
    );
    drop(work_parent);
    Ok(outcome)
}

/// Puts the package in the local store (content-addressed like S3); its `file://` URL.
async fn store_package(
    prepared: &Prepared,
    datastore_dir: &std::path::Path,
    events: &EventSink,
) -> Result<String, LocalError> {
    let store = LocalStore::new(datastore_dir);
    let sha = &prepared.package.sha256;
    let url = store.url(sha);
    if store.contains(sha).await? {
        events(Event::UploadSkipped { url: url.clone() });
    } else {
        store.put(&prepared.package, &|_, _| {}).await?;
        events(Event::Uploaded {
            url: url.clone(),
            bytes: prepared.package.size,
        });
    }
    Ok(url)
}

/// Starts the bootstrap under `sh`, as the job definition's command does. One pipe for both
/// streams, as in CloudWatch: the lines keep their order. The job gets its own process group: a
/// Ctrl-C at the terminal reaches mfbatch alone, which stops the job with one SIGTERM, as ECS
/// does.
fn spawn(
    env: Vec<(String, String)>,
    work_parent: &std::path::Path,
) -> Result<tokio::process::Child, LocalError> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("exec 2>&1; {}", bootstrap::STUB))
        .env(bootstrap::BOOTSTRAP_ENV, bootstrap::BOOTSTRAP_PY)
        .env("MFBATCH_WORKDIR_PARENT", work_parent)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The caller's own MFBATCH_* (a nested run, a stray export) must not steer this job.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MFBATCH_") {
            command.env_remove(name);
        }
    }
    command.envs(env).spawn().map_err(LocalError::Spawn)
}

/// The local job, as its events name it.
struct LocalJob {
    id: String,
    name: String,
    events: EventSink,
}

impl LocalJob {
    fn notice(&self, message: String) {
        (self.events)(Event::Warning(crate::event::Warning::Notice { message }));
    }

    fn started(&self) {
        (self.events)(Event::Submitted {
            job_id: self.id.clone(),
            job_name: self.name.clone(),
            queue: "local".into(),
        });
        (self.events)(Event::Status {
            job_id: self.id.clone(),
            job_name: self.name.clone(),
            status: JobStatus::Running,
            previous: None,
            previous_ms: None,
            reason: None,
        });
    }

    /// Turns the job's output into log events until it closes, keeping its end records apart;
    /// `stop` turning true sends SIGTERM once. Returns the records and whether it was stopped.
    async fn pump_output(
        &self,
        stdout: tokio::process::ChildStdout,
        end_nonce: &str,
        child: &tokio::process::Child,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(EndRecords, bool), LocalError> {
        let mut lines = BufReader::new(stdout);
        let mut line = Vec::new();
        let mut records = EndRecords::default();
        let mut stopping = false;
        loop {
            line.clear();
            tokio::select! {
                read = lines.read_until(b'\n', &mut line) => {
                    if read.map_err(LocalError::Output)? == 0 {
                        return Ok((records, stopping));
                    }
                    if line.ends_with(b"\n") {
                        line.pop();
                    }
                    let message = String::from_utf8_lossy(&line);
                    if let Some(record) = EndRecord::parse(&message, end_nonce) {
                        records.add(record);
                        continue;
                    }
                    (self.events)(Event::Log {
                        job_id: self.id.clone(),
                        job_name: self.name.clone(),
                        attempt: 1,
                        timestamp_ms: now_ms(),
                        message: message.into_owned(),
                    });
                }
                changed = stop.changed(), if !stopping => {
                    if changed.is_err() || *stop.borrow() {
                        stopping = true;
                        terminate(child);
                    }
                }
            }
        }
    }

    /// The final events and the outcome, explained the same way as for Batch jobs.
    fn finish(
        &self,
        exit_code: i32,
        step_end: Option<crate::bootstrap::end_record::StepEnd>,
        stopped: bool,
        started: Instant,
        end_nonce: String,
    ) -> Outcome {
        let events = &self.events;
        if let Some(end) = step_end {
            events(Event::StepExited {
                job_id: self.id.clone(),
                job_name: self.name.clone(),
                end,
            });
        }
        let final_status = if exit_code == 0 {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        };
        events(Event::Status {
            job_id: self.id.clone(),
            job_name: self.name.clone(),
            status: final_status,
            previous: Some(JobStatus::Running),
            previous_ms: Some(started.elapsed().as_millis() as u64),
            reason: None,
        });
        let snapshot = JobSnapshot {
            job_id: self.id.clone(),
            job_name: self.name.clone(),
            status: final_status,
            status_reason: stopped.then(|| "stopped by the user with mfbatch".to_owned()),
            queue: "local".into(),
            log_group: String::new(),
            attempts: vec![crate::track::snapshot::AttemptSnapshot {
                exit_code: Some(exit_code),
                ..Default::default()
            }],
            container: Default::default(),
            vcpus: None,
            memory_mib: None,
            end_nonce: Some(end_nonce),
            started_at_ms: None,
            stopped_at_ms: Some(now_ms()),
            retry: None,
            array: None,
            nodes: None,
        };
        let outcome = snapshot.outcome(step_end);
        events(Event::Exited(outcome.clone()));
        outcome
    }
}

/// The job's process group, killed when dropped: after the bootstrap exits, or when the run is
/// abandoned (a second Ctrl-C drops the future running it).
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg(2) on the group we created; no memory is involved. A group that
            // is already gone answers ESRCH, which is fine.
            unsafe {
                libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// Asks the bootstrap to stop; it forwards SIGTERM to the step, as ECS does to a container.
fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

#[cfg(unix)]
fn signal_code(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal().map(|s| 128 + s)
}
