//! The fake's array jobs, with what moto lacks: children `<parent>:<i>` that each follow their own
//! [`Timeline`], advanced one step every time the parent is described (time, compressed); a
//! parent that goes SUBMITTED → PENDING → SUCCEEDED or FAILED once every child ended (optionally
//! some describes late); a `statusSummary` that may lag behind the children; ListJobs by
//! `arrayJobId` with paging; TerminateJob/CancelJob on the parent stopping every child.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};
use wiremock::ResponseTemplate;

use super::{client_error, ok, summaries_page, Job, JobStatus, State, Timeline};

/// How the next array job (the next SubmitJob with `arrayProperties`) behaves.
#[derive(Debug, Clone, Default)]
pub struct ArrayScript {
    /// Child i's timeline; children past the end follow the default timeline.
    pub children: Vec<Timeline>,
    /// `statusSummary` shows the counts as of this many parent describes ago.
    pub summary_lag: usize,
    /// The parent ends this many describes after its last child ended.
    pub parent_end_lag: usize,
}

impl ArrayScript {
    /// Child i follows `timeline(i)`, for `size` children.
    pub fn each(size: usize, timeline: impl FnMut(usize) -> Timeline) -> Self {
        ArrayScript {
            children: (0..size).map(timeline).collect(),
            ..Default::default()
        }
    }
}

#[derive(Debug)]
pub(crate) struct ParentArray {
    size: usize,
    children: Vec<String>,
    summary_lag: usize,
    parent_end_lag: usize,
    /// Counts after each tick, newest last (as many as the lag needs).
    history: VecDeque<BTreeMap<JobStatus, usize>>,
    ended_for: usize,
    /// When each child was first seen FAILED, for latency measurements.
    pub(crate) failed_at: BTreeMap<usize, i64>,
}

const STATUSES: [JobStatus; 7] = [
    JobStatus::Submitted,
    JobStatus::Pending,
    JobStatus::Runnable,
    JobStatus::Starting,
    JobStatus::Running,
    JobStatus::Succeeded,
    JobStatus::Failed,
];

impl Job {
    /// `arrayProperties` of a parent (`detail`: with its lagging summary) or a child.
    pub(super) fn array_properties(&self, detail: bool) -> Option<Value> {
        if let Some(index) = self.array_index {
            return Some(json!({ "index": index }));
        }
        let array = self.array.as_ref()?;
        let mut props = json!({ "size": array.size });
        if detail {
            let counts = array.history.front().cloned().unwrap_or_default();
            let summary: serde_json::Map<String, Value> = STATUSES
                .iter()
                .map(|s| {
                    (
                        s.as_str().to_owned(),
                        json!(counts.get(s).copied().unwrap_or(0)),
                    )
                })
                .collect();
            props["statusSummary"] = Value::Object(summary);
        }
        Some(props)
    }
}

impl State {
    /// Creates the children of a just-submitted array parent.
    pub(super) fn spawn_children(&mut self, parent_id: &str, size: usize) {
        let script = self.scripted_arrays.pop_front().unwrap_or_default();
        let mut children = Vec::with_capacity(size);
        for index in 0..size {
            let timeline = self.part_timeline(&script.children, index);
            let id = format!("{parent_id}:{index}");
            let child = Job {
                array_index: Some(index),
                ..Job::part_of(&self.jobs[parent_id], id.clone(), timeline)
            };
            self.jobs.insert(id.clone(), child);
            self.enter_phase(&id, 0);
            children.push(id);
        }
        let parent = self.jobs.get_mut(parent_id).expect("the parent exists");
        parent.array = Some(ParentArray {
            size,
            children,
            summary_lag: script.summary_lag,
            parent_end_lag: script.parent_end_lag,
            history: VecDeque::new(),
            ended_for: 0,
            failed_at: BTreeMap::new(),
        });
    }

    /// One parent describe: every child moves on a step, the summary is taken, and the parent's
    /// status follows (SUBMITTED at first, then PENDING until every child ended).
    pub(super) fn tick_array(&mut self, parent_id: &str) {
        if self.jobs[parent_id].status.is_terminal() {
            return;
        }
        let children = self.jobs[parent_id]
            .array
            .as_ref()
            .expect("a parent")
            .children
            .clone();
        let mut counts: BTreeMap<JobStatus, usize> = BTreeMap::new();
        let mut failed_now = Vec::new();
        for (index, child) in children.iter().enumerate() {
            self.advance(child);
            let job = self.jobs.get_mut(child).expect("a child");
            job.seen += 1;
            *counts.entry(job.status).or_default() += 1;
            if job.status == JobStatus::Failed {
                failed_now.push(index);
            }
        }
        let parent = self.jobs.get_mut(parent_id).expect("the parent");
        let seen = parent.seen;
        let array = parent.array.as_mut().expect("a parent");
        let now = super::now_ms();
        for index in failed_now {
            array.failed_at.entry(index).or_insert(now);
        }
        let ended: usize = counts
            .iter()
            .filter(|(s, _)| s.is_terminal())
            .map(|(_, n)| n)
            .sum();
        let any_failed = counts.contains_key(&JobStatus::Failed);
        array.history.push_back(counts);
        while array.history.len() > array.summary_lag + 1 {
            array.history.pop_front();
        }
        if ended == array.size {
            array.ended_for += 1;
        }
        let end = ended == array.size && array.ended_for > array.parent_end_lag;
        if end {
            // The summary catches up when the parent ends.
            let last = array.history.back().cloned().unwrap_or_default();
            array.history = VecDeque::from([last]);
        }
        parent.status = if end {
            parent.stopped_at = Some(super::now_ms());
            parent.status_reason = Some(if any_failed {
                "Array Child Job failed".into()
            } else {
                "Array Job succeeded".into()
            });
            if any_failed {
                JobStatus::Failed
            } else {
                JobStatus::Succeeded
            }
        } else if seen == 0 {
            JobStatus::Submitted
        } else {
            JobStatus::Pending
        };
    }

    /// TerminateJob / CancelJob on a parent: every child not yet ended stops, then the parent.
    pub(super) fn stop_array(
        &mut self,
        parent_id: &str,
        reason: &str,
        cancel: bool,
    ) -> ResponseTemplate {
        let children = self.jobs[parent_id]
            .array
            .as_ref()
            .expect("a parent")
            .children
            .clone();
        for child in children {
            let body = json!({ "jobId": child, "reason": reason });
            let _ = self.stop_job(&body, cancel);
        }
        let parent = self.jobs.get_mut(parent_id).expect("the parent");
        if !parent.status.is_terminal() {
            parent.status = JobStatus::Failed;
            parent.status_reason = Some(reason.to_owned());
            parent.stopped_at = Some(super::now_ms());
        }
        ok(json!({}))
    }

    /// ListJobs by `arrayJobId`: the children with the status asked (RUNNING without one), by
    /// index, `maxResults` (at most 100) per page.
    pub(super) fn list_children(&self, parent_id: &str, body: &Value) -> ResponseTemplate {
        let Some(array) = self.jobs.get(parent_id).and_then(|j| j.array.as_ref()) else {
            return client_error(&format!("{parent_id} is not an array job"));
        };
        let status = body["jobStatus"].as_str().unwrap_or("RUNNING");
        let matching: Vec<&Job> = array
            .children
            .iter()
            .map(|id| &self.jobs[id])
            .filter(|j| j.status.as_str() == status)
            .collect();
        summaries_page(&matching, body, 100)
    }

    /// When (epoch ms) each failed child of `parent_id` was first seen FAILED.
    pub(crate) fn children_failed_at(&self, parent_id: &str) -> BTreeMap<usize, i64> {
        self.jobs
            .get(parent_id)
            .and_then(|j| j.array.as_ref())
            .map(|a| a.failed_at.clone())
            .unwrap_or_default()
    }
}
