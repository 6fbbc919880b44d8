//! `mfbatch list`: the jobs of the queue (or an array's children), newest first, as a table or
//! one JSON object per line.

use std::collections::BTreeMap;

use clap::Args;
use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::event::JobStatus;
use mfbatch::settings::{self, Key, Sources};
use mfbatch::track::list::{list_jobs, JobRow, ListQuery, MAX_ROWS};
use mfbatch::track::RateBudget;

use super::args::Output;
use super::exit;
use super::failure::Failure;
use super::render::format_timestamp;
use super::run::parse_duration;
use super::Global;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The queue [env: METAFLOW_BATCH_JOB_QUEUE].
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Only jobs in this status (repeatable): SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING,
    /// SUCCEEDED, FAILED.
    #[arg(long, value_name = "STATUS")]
    pub status: Vec<String>,
    /// Only jobs created within this long (e.g. 2h, 30m).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Only jobs whose name starts with PREFIX.
    #[arg(long, value_name = "PREFIX")]
    pub name: Option<String>,
    /// Only jobs submitted by this user (their mfbatch.user tag is METAFLOW_USER).
    #[arg(long)]
    pub mine: bool,
    /// The children of this array job instead of the queue's jobs.
    #[arg(long, value_name = "JOB_ID")]
    pub array: Option<String>,
    /// Show at most N jobs.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
}

pub async fn list(args: ListArgs, global: Global) -> Result<u8, Failure> {
    let mut flags = BTreeMap::new();
    if let Some(queue) = &args.queue {
        flags.insert(Key::BatchJobQueue, queue.clone());
    }
    let settings = settings::resolve(&Sources::from_process(flags))?;
    let statuses = args
        .status
        .iter()
        .map(|s| {
            JobStatus::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
                Failure::from(mfbatch::error::ConfigError::InvalidFlag {
                    flag: "--status",
                    value: s.clone(),
                    reason: "expected SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED or FAILED".into(),
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let since_ms = args
        .since
        .as_deref()
        .map(|s| parse_duration("--since", s))
        .transpose()?
        .map(mfbatch::track::logs::start_time_for);
    let queue = match &args.array {
        Some(_) => String::new(),
        None => settings.require(Key::BatchJobQueue)?.value.clone(),
    };
    let user = match args.mine {
        true => Some(tag_value(settings.require(Key::User)?.value.as_str())),
        false => None,
    };
    let query = ListQuery {
        queue,
        array_job_id: args.array.clone(),
        statuses,
        since_ms,
        name_prefix: args.name.clone(),
        user,
        limit: args.limit.max(1),
    };
    let clients = Clients::from_environment(&ClientOptions::default()).await?;
    let budget = RateBudget::new(5.0);
    let (rows, truncated) = list_jobs(&clients.batch, &budget, &query)
        .await
        .map_err(|e| {
            let hint = e.hint();
            Failure::new(e, hint, exit::FAILURE)
        })?;
    print_rows(&rows, args.array.is_some(), global.output);
    if truncated && !global.quiet {
        eprintln!("(only the first {MAX_ROWS} jobs listed were read; narrow with --status, --since or --name)");
    }
    Ok(exit::SUCCESS)
}

/// The `mfbatch.user` tag's value for a user name, made valid as mfbatch makes it at submit.
fn tag_value(user: &str) -> String {
    user.chars()
        .map(|c| {
            if mfbatch::spec::is_tag_char(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

fn print_rows(rows: &[JobRow], array: bool, output: Output) {
    if output == Output::Json {
        for row in rows {
            println!("{}", serde_json::to_string(row).expect("serializes"));
        }
        return;
    }
    let id_width = rows
        .iter()
        .map(|r| r.job_id.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let name_width = rows
        .iter()
        .map(|r| r.job_name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let first = if array { "INDEX  " } else { "" };
    println!(
        "{first}{:id_width$}  {:name_width$}  {:9}  {:24}  EXIT",
        "JOB ID", "NAME", "STATUS", "CREATED"
    );
    for r in rows {
        let index = match (array, r.array_index) {
            (true, Some(i)) => format!("{i:<5}  "),
            (true, None) => "       ".to_owned(),
            _ => String::new(),
        };
        let created = r.created_at_ms.map(format_timestamp).unwrap_or_default();
        let exit = r.exit_code.map(|c| c.to_string()).unwrap_or_default();
        let array_size = r
            .array_size
            .map(|n| format!("  [array of {n}]"))
            .unwrap_or_default();
        println!(
            "{index}{:id_width$}  {:name_width$}  {:9}  {created:24}  {exit}{array_size}",
            r.job_id,
            r.job_name,
            r.status.as_str()
        );
    }
}
