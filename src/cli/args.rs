//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "mfbatch",
    version,
    about = "Run Metaflow-style Python steps on AWS Batch and follow them to the end",
    after_help = "Configuration is read like Metaflow's: flags, then METAFLOW_* variables, then \
                  .metaflow/config.json, then ~/.metaflowconfig/config.json. `mfbatch config` shows the result."
)]
pub struct Cli {
    /// How to write results: text for people, json (one event per line) for programs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// Print only the job's own output (and errors).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Package a script, submit it to AWS Batch (or run it locally) and follow it to the end.
    Run(Box<RunArgs>),
    /// Show every setting, its value and where it came from.
    Config,
    /// Print a job's logs, following them until the job ends.
    Logs(LogsArgs),
    /// Show jobs' status.
    Status(StatusArgs),
    /// Stop jobs: cancel them before they run, terminate them after.
    Kill(KillArgs),
    /// The CloudFormation stack for Batch: template, deploy, status, delete.
    #[command(subcommand)]
    Stack(super::stack_cmd::StackArgs),
    /// Write Metaflow's config file: --from-stack NAME, aws (questions), show, export, import, reset.
    Configure(Box<super::configure_cmd::ConfigureArgs>),
    /// Check each piece a run needs (credentials, bucket, queue, roles, logs), with fixes.
    Doctor(super::doctor_cmd::DoctorArgs),
    /// The daemon orchestrators drive: JSON-RPC on stdio, a unix socket or 127.0.0.1 (docs/serve-protocol.md).
    Serve(super::serve_cmd::ServeArgs),
    /// Metaflow metadata: `sync` sends the records still in the local spool.
    Metadata {
        #[command(subcommand)]
        command: MetadataCommand,
    },
    /// List the queue's jobs (or an array's children), newest first.
    List(super::list_cmd::ListArgs),
}

#[derive(Debug, Subcommand)]
pub enum MetadataCommand {
    /// Send the records earlier commands could not (the metadata service was down).
    Sync,
}

#[derive(Debug, Args)]
// Negative numbers reach the validator, which names the flag (`--memory -5`), instead of being
// taken for flags.
#[command(allow_negative_numbers = true)]
pub struct RunArgs {
    /// The Python script to run (a step file).
    pub script: PathBuf,

    /// vCPUs for the job (fractions such as 0.5 on Fargate).
    #[arg(long, value_name = "N")]
    pub cpu: Option<String>,
    /// Memory for the job, in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory: Option<String>,
    /// GPUs for the job.
    #[arg(long, value_name = "N")]
    pub gpu: Option<String>,

    /// Container image [env: METAFLOW_BATCH_CONTAINER_IMAGE] (default: python:<local major.minor>).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Python version X.Y of the default image, instead of the local python3's.
    #[arg(long, value_name = "X.Y")]
    pub python: Option<String>,
    /// Batch job queue, name or ARN [env: METAFLOW_BATCH_JOB_QUEUE].
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// IAM role the job runs as [env: METAFLOW_ECS_S3_ACCESS_IAM_ROLE].
    #[arg(long, value_name = "ARN")]
    pub iam_role: Option<String>,
    /// ECS execution role, for Fargate queues [env: METAFLOW_ECS_FARGATE_EXECUTION_ROLE].
    #[arg(long, value_name = "ARN")]
    pub execution_role: Option<String>,
    /// S3 root for packages [env: METAFLOW_DATASTORE_SYSROOT_S3].
    #[arg(long, value_name = "S3URL")]
    pub datastore_root: Option<String>,
    /// More suffixes of files to package (e.g. .sql,.yaml), added to METAFLOW_DEFAULT_PACKAGE_SUFFIXES (default .py,.R,.RDS).
    #[arg(long, value_name = "LIST")]
    pub package_suffixes: Option<String>,

    /// Environment variable for the job (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Tag for the job (repeatable), added to METAFLOW_BATCH_DEFAULT_TAGS.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Job name (default: <user>-<script name>).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Directory to package (default: the script's directory); the script must be inside it.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Stop each attempt after this many seconds (at least 60).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<String>,

    /// Warn when the job waits in RUNNABLE this long, with what may be keeping it there.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub runnable_warning: String,
    /// Stop and fail the job if it waits in RUNNABLE this long (e.g. 30m); default: wait.
    #[arg(long, value_name = "DURATION")]
    pub runnable_timeout: Option<String>,

    /// Let Batch start the job again up to N times (0-9) when its instance is lost (spot reclaim).
    #[arg(long, value_name = "N")]
    pub retries: Option<String>,
    /// With --retries: retry any failure, not only a lost instance.
    #[arg(long)]
    pub retry_any_failure: bool,

    /// Print the job id once submitted and exit, instead of following the job.
    #[arg(long)]
    pub detach: bool,
    /// Show what would be uploaded, registered and submitted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Show the resolved settings and exit.
    #[arg(long)]
    pub show_config: bool,
    /// Run on this machine instead of AWS Batch (no AWS account needed).
    #[arg(long)]
    pub local: bool,

    /// Metaflow flow to record the job in (default: from the script's name, e.g. TrainFlow).
    #[arg(long, value_name = "NAME")]
    pub flow: Option<String>,
    /// Join this existing Metaflow run instead of starting a new one.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Metaflow step of the job (default: from the script's name).
    #[arg(long, value_name = "NAME")]
    pub step: Option<String>,
    /// Record nothing in Metaflow's metadata [env: METAFLOW_DEFAULT_METADATA=none].
    #[arg(long)]
    pub no_metadata: bool,
    #[command(flatten)]
    pub batch: super::batch_args::BatchArgs,

    /// Arguments for the script, after `--`.
    #[arg(last = true, value_name = "SCRIPT_ARGS")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Job ids, or one Metaflow pathspec FLOW/RUN[/STEP[/TASK]].
    #[arg(required = true)]
    pub job_ids: Vec<String>,
    /// Only this attempt (1 is the first); default: every attempt.
    #[arg(long, value_name = "N")]
    pub attempt: Option<usize>,
    /// Print what is there and exit, without waiting for the job to end.
    #[arg(long)]
    pub no_follow: bool,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    pub timestamps: bool,
    /// Only lines newer than this (e.g. 10m, 2h, 30s).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Job ids, or one Metaflow pathspec FLOW/RUN[/STEP[/TASK]].
    #[arg(required = true)]
    pub job_ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Job ids.
    #[arg(required = true)]
    pub job_ids: Vec<String>,
    /// Why, recorded by Batch as the status reason.
    #[arg(long, value_name = "TEXT", default_value = "stopped with mfbatch kill")]
    pub reason: String,
}
