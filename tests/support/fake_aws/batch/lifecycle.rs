//! How a fake job moves: entering a phase of its timeline (streams, lines, attempts, end
//! records), held lines released when it ends, and one step per describe.

use super::*;

impl State {
    /// Moves a job into phase `index`, closing and opening attempts and releasing logs.
    pub(super) fn enter_phase(&mut self, id: &str, index: usize) {
        let mut job = self.jobs.remove(id).expect("the job exists");
        let now = now_ms();
        let leaving = (index > 0).then(|| job.phases[job.phase].clone());
        let phase = job.phases[index].clone();
        job.phase = index;
        job.seen = 0;
        job.status = phase.status;
        job.status_reason = phase.reason.clone();
        if phase.status.is_terminal() {
            let end = phase.end.clone();
            match (job.open_attempt(), end) {
                (Some(attempt), Some(end)) => {
                    attempt.end = end;
                    attempt.stopped_at = Some(now);
                }
                (Some(attempt), None) => attempt.stopped_at = Some(now),
                (None, Some(end)) => {
                    // Stopped before its container ran (e.g. the image could not be pulled).
                    let task_id = self.hex_id(32);
                    job.attempts.push(Attempt {
                        task_id,
                        stream: None,
                        started_at: now,
                        stopped_at: Some(now),
                        end,
                    });
                }
                (None, None) => {}
            }
            if job.status_reason.is_none() {
                job.status_reason = Some(match job.attempts.last() {
                    Some(a) if a.end.status_reason.is_some() => {
                        a.end.status_reason.clone().expect("checked")
                    }
                    Some(_) => "Essential container in task exited".into(),
                    None => "Job failed".into(),
                });
            }
            job.stopped_at = Some(now);
            let closed = job.attempts.len();
            self.jobs.insert(id.to_owned(), job);
            self.release_job_logs(id);
            self.write_end_records(id, closed, None);
            return;
        }
        if let Some(attempt) = job.open_attempt() {
            // Leaving a RUNNING phase for another phase: this attempt is over (a retry follows).
            attempt.end = leaving
                .and_then(|p| p.end)
                .unwrap_or_else(|| AttemptEnd::exit(0));
            attempt.stopped_at = Some(now);
            let closed = job.attempts.len();
            self.jobs.insert(id.to_owned(), job);
            self.write_end_records(id, closed, None);
            job = self.jobs.remove(id).expect("the job exists");
        }
        if phase.status == JobStatus::Running {
            let task_id = self.hex_id(32);
            let stream = format!("{}/default/{task_id}", job.definition_name);
            job.started_at.get_or_insert(now);
            job.attempts.push(Attempt {
                task_id,
                stream: Some(stream.clone()),
                started_at: now,
                stopped_at: None,
                end: AttemptEnd::default(),
            });
            let attempt_no = job.attempts.len();
            let nonce = job.end_nonce.clone();
            let expand = |l: &String| expand_end_marker(l, nonce.as_deref(), attempt_no);
            let events: Vec<(i64, String)> = phase
                .logs
                .iter()
                .map(|l| (self.next_log_ms(), expand(l)))
                .collect();
            let log_stream = self.stream_mut(BATCH_LOG_GROUP, &stream);
            log_stream.events.extend(events);
            log_stream.missing_reads = phase.stream_missing_reads;
            for (release, lines) in &phase.pending {
                log_stream.pending.push(Pending {
                    release: match release {
                        PendingRelease::JobDone => Release::JobDone(id.to_owned()),
                        PendingRelease::AfterReads(n) => Release::AfterReads(*n),
                    },
                    lines: lines.iter().map(expand).collect(),
                });
            }
        }
        self.jobs.insert(id.to_owned(), job);
    }

    /// Appends both end records of attempt `attempt` (1-based) to its stream, as the bootstrap
    /// writes them when the step exits, unless the timeline placed records by hand or has none.
    /// `origin` `None`: `stopped` when the attempt ended for a reason of Batch's (a lost host, a
    /// timeout), as the bootstrap then forwarded a SIGTERM; else `step`.
    pub(super) fn write_end_records(&mut self, id: &str, attempt: usize, origin: Option<&str>) {
        let job = &self.jobs[id];
        let Some(nonce) = job.end_nonce.clone().filter(|_| job.auto_end_records) else {
            return;
        };
        let Some(a) = attempt.checked_sub(1).and_then(|i| job.attempts.get(i)) else {
            return;
        };
        let (Some(stream), Some(code)) = (a.stream.clone(), a.end.exit_code) else {
            return;
        };
        let origin = origin.unwrap_or(match a.end.status_reason.as_deref() {
            None | Some("Essential container in task exited") => "step",
            Some(_) => "stopped",
        });
        let placed_by_hand = self
            .log_groups
            .get(BATCH_LOG_GROUP)
            .and_then(|g| g.get(&stream))
            .is_some_and(|s| {
                let ours = format!("mfbatch-end:v1:{nonce}:");
                s.events.iter().any(|(_, m)| m.starts_with(&ours))
                    || s.pending
                        .iter()
                        .any(|p| p.lines.iter().any(|m| m.starts_with(&ours)))
            });
        if placed_by_hand {
            return;
        }
        let lines: Vec<(i64, String)> = ["stdout", "stderr"]
            .iter()
            .map(|pipe| {
                (
                    self.next_log_ms(),
                    format!("mfbatch-end:v1:{nonce}:{attempt}:{code}:{origin}:{pipe}"),
                )
            })
            .collect();
        self.stream_mut(BATCH_LOG_GROUP, &stream)
            .events
            .extend(lines);
    }

    /// Makes the lines held until this job ended visible.
    pub(super) fn release_job_logs(&mut self, id: &str) {
        let streams: Vec<String> = self.jobs[id]
            .attempts
            .iter()
            .filter_map(|a| a.stream.clone())
            .collect();
        for stream in streams {
            self.release(
                BATCH_LOG_GROUP,
                &stream,
                |r| matches!(r, Release::JobDone(j) if j == id),
            );
        }
    }

    /// One step of a job's timeline (one describe, or one tick of the clock when clocked).
    pub(crate) fn step(&mut self, id: &str) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        if job.array.is_some() {
            self.tick_array(id);
        } else if job.without_container() {
            self.tick_nodes(id);
        } else {
            self.advance(id);
        }
        self.jobs.get_mut(id).expect("still there").seen += 1;
    }

    /// A phase change happens at the call that first shows it, so its effects (a new attempt's
    /// stream, lines held until the end) appear exactly when the client sees it.
    pub(super) fn advance(&mut self, id: &str) {
        let job = &self.jobs[id];
        let next = job.phase + 1;
        if !job.status.is_terminal()
            && next < job.phases.len()
            && job.seen >= job.phases[job.phase].describes
        {
            self.enter_phase(id, next);
        }
    }
}
