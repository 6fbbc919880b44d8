//! `mfbatch logs`, `mfbatch status` and `mfbatch kill`: commands on jobs submitted earlier.

use std::collections::BTreeMap;

use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::error::AwsError;
use mfbatch::event::JobStatus;
use mfbatch::settings::{self, Sources};
use mfbatch::track::snapshot::JobSnapshot;
use mfbatch::track::{
    logs::start_time_for, stop_job, FollowRequest, RateBudget, TrackError, MAX_IDS_PER_CALL,
};

use super::args::{KillArgs, LogsArgs, Output, StatusArgs};
use super::exit;
use super::failure::Failure;
use super::follow::{self, Interrupts, OnInterrupt};
use super::report::print_error;
use super::run::parse_duration;
use super::signals::Signals;
use super::Global;

/// How long an id the user typed may be unknown to DescribeJobs before it is reported: it was
/// not just submitted, so only a moment of eventual consistency is due.
const TYPED_ID_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

async fn clients() -> Result<Clients, Failure> {
    Ok(Clients::from_environment(&ClientOptions::default()).await?)
}

pub async fn logs(args: LogsArgs, global: Global) -> Result<u8, Failure> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_duration("--since", s))
        .transpose()?
        .map(start_time_for);
    if args.attempt == Some(0) {
        return Err(Failure::usage_message("--attempt counts from 1", None));
    }
    if let Some(spec) = super::pathspec_cmd::pathspec_arg(&args.job_ids)? {
        return super::pathspec_cmd::logs(spec, args, since, global).await;
    }
    let mut signals = Signals::install().map_err(|e| Failure::new(e, None, exit::FAILURE))?;
    let settings = settings::resolve(&Sources::from_process(BTreeMap::new()))?;
    let clients = clients().await?;
    let requests = args
        .job_ids
        .iter()
        .map(|id| FollowRequest {
            attempt: args.attempt,
            logs_since_ms: since,
            once: args.no_follow,
            not_found_grace: Some(TYPED_ID_GRACE),
            ..FollowRequest::new(id.clone())
        })
        .collect();
    follow::follow(
        &clients,
        follow::tracker_config(&settings, clients.region(), None, None)?,
        requests,
        follow::renderer(&global, args.job_ids.len() > 1, args.timestamps),
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

/// A job DescribeJobs does not know, said as `logs` says it (with its hint).
fn not_found(global: &Global, id: &str) {
    let err = TrackError::NotFound {
        job_id: id.to_owned(),
    };
    let hint = err.hint();
    print_error(global, &err, hint);
}

/// Describes jobs in calls of up to 100 ids.
async fn describe(clients: &Clients, ids: &[String]) -> Result<Vec<JobSnapshot>, Failure> {
    let mut found = Vec::new();
    for chunk in ids.chunks(MAX_IDS_PER_CALL) {
        found.extend(
            mfbatch::track::snapshot::describe(&clients.batch, chunk)
                .await
                .map_err(aws_failure)?,
        );
    }
    Ok(found)
}

fn aws_failure(e: AwsError) -> Failure {
    let hint = e.hint();
    Failure::new(e, hint, exit::FAILURE)
}

pub async fn status(args: StatusArgs, global: Global) -> Result<u8, Failure> {
    if let Some(spec) = super::pathspec_cmd::pathspec_arg(&args.job_ids)? {
        return super::pathspec_cmd::status(spec, global).await;
    }
    let clients = clients().await?;
    let snapshots = describe(&clients, &args.job_ids).await?;
    let missing: Vec<&String> = args
        .job_ids
        .iter()
        .filter(|id| !snapshots.iter().any(|s| &s.job_id == *id))
        .collect();
    for snapshot in &snapshots {
        let outcome = snapshot
            .status
            .is_terminal()
            .then(|| snapshot.outcome(None));
        match global.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({
                    "job_id": snapshot.job_id,
                    "job_name": snapshot.job_name,
                    "status": snapshot.status,
                    "status_reason": snapshot.status_reason,
                    "exit_code": outcome.as_ref().and_then(|o| o.exit_code),
                    "summary": outcome.as_ref().and_then(|o| o.summary.clone()),
                    "array": snapshot.array.as_ref().map(|a| serde_json::json!({
                        "size": a.size, "index": a.index, "counts": a.counts,
                    })),
                    "nodes": snapshot.nodes.as_ref().map(|n| serde_json::json!({
                        "num_nodes": n.num_nodes, "main_node": n.main_node,
                        "node_index": n.node_index, "is_main": n.is_main,
                    })),
                })
            ),
            Output::Text => {
                // An array's parent: its children's counts say more than its own status.
                let array = snapshot.array.as_ref().filter(|a| a.is_parent()).map(|a| {
                    let counts: Vec<String> =
                        a.counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
                    format!("array of {}: {}", a.size.unwrap_or(0), counts.join(" · "))
                });
                let nodes = snapshot
                    .nodes
                    .as_ref()
                    .filter(|n| n.is_parent())
                    .and_then(|n| n.num_nodes)
                    .map(|n| {
                        format!(
                            "multi-node job of {n} nodes ({}#0 to #{})",
                            snapshot.job_id,
                            n.saturating_sub(1)
                        )
                    });
                let detail = array
                    .or(nodes.filter(|_| !snapshot.status.is_terminal()))
                    .or_else(|| outcome.and_then(|o| o.summary))
                    .or_else(|| snapshot.status_reason.clone())
                    .unwrap_or_default();
                println!(
                    "{}  {:<10} {}  {}",
                    snapshot.job_id, snapshot.status, snapshot.job_name, detail
                );
            }
        }
    }
    for id in &missing {
        not_found(&global, id);
    }
    Ok(if missing.is_empty() {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

pub async fn kill(args: KillArgs, global: Global) -> Result<u8, Failure> {
    let clients = clients().await?;
    let snapshots = describe(&clients, &args.job_ids).await?;
    let budget = RateBudget::new(5.0);
    let mut code = exit::SUCCESS;
    for id in &args.job_ids {
        if let Some(job) = mfbatch::track::nodes::job_of_node(id) {
            eprintln!(
                "{} {id} is a node of multi-node job {job}; nodes are not stopped alone\n{} mfbatch kill {job}   (stops every node)",
                global.style.error("error:"),
                global.style.dim("hint:")
            );
            code = exit::FAILURE;
            continue;
        }
        let Some(snapshot) = snapshots.iter().find(|s| &s.job_id == id) else {
            not_found(&global, id);
            code = exit::FAILURE;
            continue;
        };
        if snapshot.status.is_terminal() {
            eprintln!("Job {id} already ended ({})", snapshot.status);
            continue;
        }
        stop_job(
            &clients.batch,
            &budget,
            id,
            Some(snapshot.status),
            &args.reason,
        )
        .await
        .map_err(aws_failure)?;
        let verb = if snapshot.status < JobStatus::Starting {
            "Cancelled"
        } else {
            "Terminated"
        };
        eprintln!("{verb} job {id} ({})", snapshot.status);
    }
    Ok(code)
}
