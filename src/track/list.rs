//! Listing jobs (`mfbatch list`): ListJobs by queue or by array, paged through the Batch budget,
//! newest first. ListJobs returns only RUNNING jobs unless asked for a status, and a filter
//! (name, creation time) returns every status but replaces the status: so a name or time query
//! is one filtered listing, anything else one listing per status asked.

use aws_sdk_batch::types::{JobSummary, KeyValuesPair};
use serde::Serialize;

use super::budget::RateBudget;
use crate::error::{AwsError, AwsErrorKind, Service};
use crate::event::JobStatus;

/// Every status, for a listing without `--status`.
pub const ALL_STATUSES: [JobStatus; 7] = [
    JobStatus::Submitted,
    JobStatus::Pending,
    JobStatus::Runnable,
    JobStatus::Starting,
    JobStatus::Running,
    JobStatus::Succeeded,
    JobStatus::Failed,
];

/// Most jobs one listing reads (100 pages): a guard against paging a queue's whole history.
pub const MAX_ROWS: usize = 10_000;

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// The queue (name or ARN); ignored when `array_job_id` is set.
    pub queue: String,
    /// List this array's children instead of the queue's jobs.
    pub array_job_id: Option<String>,
    /// Only these statuses (empty: all).
    pub statuses: Vec<JobStatus>,
    /// Only jobs created at or after this time (epoch ms).
    pub since_ms: Option<i64>,
    /// Only jobs whose name starts with this.
    pub name_prefix: Option<String>,
    /// Only jobs tagged `mfbatch.user` = this (costs a DescribeJobs per 100 candidates).
    pub user: Option<String>,
    /// Show at most this many (newest first).
    pub limit: usize,
}

/// One listed job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub job_id: String,
    pub job_name: String,
    pub status: JobStatus,
    pub created_at_ms: Option<i64>,
    pub stopped_at_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub status_reason: Option<String>,
    /// An array child's index; an array parent's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array_size: Option<usize>,
}

/// The jobs, newest first; `true` when [`MAX_ROWS`] cut the listing short.
pub async fn list_jobs(
    client: &aws_sdk_batch::Client,
    budget: &RateBudget,
    query: &ListQuery,
) -> Result<(Vec<JobRow>, bool), AwsError> {
    let statuses = if query.statuses.is_empty() {
        ALL_STATUSES.to_vec()
    } else {
        query.statuses.clone()
    };
    let filter = filter_for(query);
    let mut rows = Vec::new();
    let mut truncated = false;
    // With a filter (queues only) one listing has every status.
    let passes: Vec<Option<JobStatus>> = if filter.is_some() {
        vec![None]
    } else {
        statuses.iter().copied().map(Some).collect()
    };
    for status in passes {
        truncated |= page(client, budget, query, status, filter.clone(), &mut rows).await?;
    }
    rows.retain(|r: &JobRow| {
        statuses.contains(&r.status)
            && query
                .since_ms
                .is_none_or(|since| r.created_at_ms.is_some_and(|c| c >= since))
            && query
                .name_prefix
                .as_deref()
                .is_none_or(|p| r.job_name.starts_with(p))
    });
    rows.sort_by(|a, b| {
        b.created_at_ms
            .cmp(&a.created_at_ms)
            .then_with(|| a.array_index.cmp(&b.array_index))
    });
    if let Some(user) = &query.user {
        rows = mine(client, budget, rows, user, query.limit).await?;
    }
    rows.truncate(query.limit);
    Ok((rows, truncated))
}

/// The one filter a queue listing takes: the name prefix, else the creation time. Filters do
/// not apply to array children.
fn filter_for(query: &ListQuery) -> Option<KeyValuesPair> {
    if query.array_job_id.is_some() {
        return None;
    }
    let (name, value) = match (&query.name_prefix, query.since_ms) {
        (Some(prefix), _) => ("JOB_NAME", format!("{prefix}*")),
        (None, Some(since)) => ("AFTER_CREATED_AT", since.to_string()),
        (None, None) => return None,
    };
    Some(KeyValuesPair::builder().name(name).values(value).build())
}

/// Pages through one listing into `rows`; `true` when [`MAX_ROWS`] was reached.
async fn page(
    client: &aws_sdk_batch::Client,
    budget: &RateBudget,
    query: &ListQuery,
    status: Option<JobStatus>,
    filter: Option<KeyValuesPair>,
    rows: &mut Vec<JobRow>,
) -> Result<bool, AwsError> {
    let mut token = None;
    loop {
        budget.acquire().await;
        let mut request = client
            .list_jobs()
            .max_results(100)
            .set_next_token(token)
            .set_filters(filter.clone().map(|f| vec![f]))
            .set_job_status(status.map(|s| aws_sdk_batch::types::JobStatus::from(s.as_str())));
        request = match &query.array_job_id {
            Some(parent) => request.array_job_id(parent),
            None => request.job_queue(&query.queue),
        };
        let out = request.send().await.map_err(|e| {
            let e = AwsError::from_sdk(Service::Batch, "ListJobs", e);
            if e.kind == AwsErrorKind::Throttled {
                budget.throttled();
            }
            e
        })?;
        budget.succeeded();
        rows.extend(out.job_summary_list().iter().filter_map(row));
        if rows.len() >= MAX_ROWS {
            return Ok(true);
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(false);
        }
    }
}

fn row(job: &JobSummary) -> Option<JobRow> {
    Some(JobRow {
        job_id: job.job_id()?.to_owned(),
        job_name: job.job_name().unwrap_or_default().to_owned(),
        status: JobStatus::parse(job.status()?.as_str())?,
        created_at_ms: job.created_at(),
        stopped_at_ms: job.stopped_at(),
        exit_code: job.container().and_then(|c| c.exit_code()),
        status_reason: job.status_reason().map(str::to_owned),
        array_index: job
            .array_properties()
            .and_then(|a| a.index())
            .map(|i| i.max(0) as usize)
            .or_else(|| {
                let (_, index) = job.job_id()?.rsplit_once(':')?;
                index.parse().ok()
            }),
        array_size: job
            .array_properties()
            .and_then(|a| a.size())
            .map(|s| s.max(0) as usize),
    })
}

/// The rows whose job carries the `mfbatch.user` tag `user` (ListJobs has no tags: the
/// candidates are described, newest first, 100 at a time, until `limit` are found).
async fn mine(
    client: &aws_sdk_batch::Client,
    budget: &RateBudget,
    rows: Vec<JobRow>,
    user: &str,
    limit: usize,
) -> Result<Vec<JobRow>, AwsError> {
    let mut kept = Vec::new();
    for chunk in rows.chunks(super::MAX_IDS_PER_CALL) {
        budget.acquire().await;
        let ids: Vec<String> = chunk.iter().map(|r| r.job_id.clone()).collect();
        let out = client
            .describe_jobs()
            .set_jobs(Some(ids))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Service::Batch, "DescribeJobs", e))?;
        let ours: std::collections::HashSet<&str> = out
            .jobs()
            .iter()
            .filter(|j| {
                j.tags()
                    .and_then(|t| t.get("mfbatch.user"))
                    .is_some_and(|u| u == user)
            })
            .filter_map(|j| j.job_id())
            .collect();
        kept.extend(
            chunk
                .iter()
                .filter(|r| ours.contains(r.job_id.as_str()))
                .cloned(),
        );
        if kept.len() >= limit {
            break;
        }
    }
    Ok(kept)
}
