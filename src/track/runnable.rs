//! A job that waits in RUNNABLE (no compute environment places it): warned about once, with
//! what can be said about why, and with `runnable_timeout` stopped — for ordinary jobs and
//! multi-node parents alike.

use std::sync::Arc;
use std::time::Duration;

use super::job::Context;
use super::poller;
use super::snapshot::JobSnapshot;
use super::{stop_job, TrackError};
use crate::event::{Event, EventSink, Warning};
use crate::launch::queue;

/// What was already done about a job waiting in RUNNABLE.
#[derive(Debug, Default)]
pub(super) struct RunnableWatch {
    warned: bool,
    stopped: bool,
}

impl RunnableWatch {
    /// Whether the job was stopped for waiting too long.
    pub(super) fn stopped(&self) -> bool {
        self.stopped
    }

    /// The error of a job stopped for waiting too long.
    pub(super) fn timeout(ctx: &Context, job_id: String) -> TrackError {
        TrackError::RunnableTimeout {
            job_id,
            waited: ctx.config.runnable_timeout.unwrap_or_default(),
        }
    }

    /// Warns about (and with a timeout, stops) a job RUNNABLE for `waited`.
    pub(super) async fn check(
        &mut self,
        ctx: &Context,
        snapshot: &JobSnapshot,
        waited: Duration,
        events: &EventSink,
    ) -> Result<(), TrackError> {
        let job_id = &snapshot.job_id;
        if !self.warned && waited >= ctx.config.runnable_warning {
            self.warned = true;
            let detail = runnable_detail(ctx, snapshot).await;
            events(Event::Warning(Warning::StuckRunnable {
                job_id: job_id.clone(),
                seconds: waited.as_secs(),
                reason: snapshot.status_reason.clone(),
                detail,
            }));
        }
        let Some(limit) = ctx.config.runnable_timeout else {
            return Ok(());
        };
        if waited < limit || self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let reason = format!("mfbatch: RUNNABLE for longer than {}s", limit.as_secs());
        events(Event::Terminating {
            job_id: job_id.clone(),
            reason: reason.clone(),
        });
        stop_job(
            &ctx.batch,
            &ctx.batch_budget,
            job_id,
            Some(snapshot.status),
            &reason,
        )
        .await
        .map_err(|e| TrackError::Aws {
            job_id: job_id.clone(),
            source: Arc::new(e),
        })?;
        let _ = ctx.poller.send(poller::Command::PollSoon {
            job_id: job_id.clone(),
        });
        Ok(())
    }
}

/// What can be said about why a job is not placed: its request against the queue's capacity.
async fn runnable_detail(ctx: &Context, snapshot: &JobSnapshot) -> Option<String> {
    let requested = format!(
        "requested {} vCPU and {} MiB",
        snapshot.vcpus.as_deref().unwrap_or("?"),
        snapshot.memory_mib.as_deref().unwrap_or("?")
    );
    ctx.batch_budget.acquire().await;
    let info = queue::describe(&ctx.batch, &snapshot.queue)
        .await
        .ok()
        .flatten();
    let Some(info) = info else {
        return Some(requested);
    };
    let environments: Vec<String> = info
        .compute_environments
        .iter()
        .map(|ce| {
            format!(
                "{} ({}{}, max {} vCPU)",
                ce.name,
                if ce.resource_type.is_empty() {
                    "unmanaged"
                } else {
                    &ce.resource_type
                },
                if ce.state == "ENABLED" || ce.state.is_empty() {
                    String::new()
                } else {
                    format!(", {}", ce.state)
                },
                ce.max_vcpus.map_or("?".into(), |v| v.to_string())
            )
        })
        .collect();
    Some(format!(
        "{requested}; queue {} ({}) uses {}",
        info.name,
        info.state,
        if environments.is_empty() {
            "no compute environment".into()
        } else {
            environments.join(", ")
        }
    ))
}
