//! The flags of `mfbatch run` for AWS Batch's container options, arrays, multi-node jobs and
//! scheduling. Container options and `--priority`/`--share` are settings (they go through the
//! one precedence function); the rest shape one run only.

use std::path::PathBuf;

use clap::Args;
use mfbatch::error::ConfigError;
use mfbatch::settings::batch_keys::list_value;
use mfbatch::settings::BatchKey;
use mfbatch::spec::ScheduleOptions;

#[derive(Debug, Args, Default)]
pub struct BatchArgs {
    /// Shared memory (/dev/shm) in MiB [EC2].
    #[arg(long, value_name = "MIB", help_heading = "Container")]
    pub shm: Option<String>,
    /// A tmpfs mount, e.g. /scratch:2048:noexec (repeatable) [EC2].
    #[arg(long, value_name = "PATH:MIB[:OPTS]", help_heading = "Container")]
    pub tmpfs: Vec<String>,
    /// Swap the container may use, in MiB [EC2].
    #[arg(long, value_name = "MIB", help_heading = "Container")]
    pub max_swap: Option<String>,
    /// How readily the container swaps, 0-100 [EC2].
    #[arg(long, value_name = "N", help_heading = "Container")]
    pub swappiness: Option<String>,
    /// Mount a host directory (repeatable) [EC2].
    #[arg(long, value_name = "HOST:CONTAINER[:ro]", help_heading = "Container")]
    pub volume: Vec<String>,
    /// Mount an EFS file system: FS_ID[:PATH][,ap=fsap-…][,root=/dir][,iam][,ro] (repeatable).
    #[arg(long, value_name = "FS_ID[:PATH][,OPTS]", help_heading = "Container")]
    pub efs: Vec<String>,
    /// A variable from Secrets Manager or SSM, injected at start (needs an execution role).
    #[arg(long, value_name = "NAME=ARN", help_heading = "Container")]
    pub secret: Vec<String>,
    /// A resource limit, e.g. nofile=65536 or nofile=1024:65536 (repeatable) [EC2].
    #[arg(long, value_name = "NAME=SOFT[:HARD]", help_heading = "Container")]
    pub ulimit: Vec<String>,
    /// Run the container privileged [EC2].
    #[arg(long, help_heading = "Container")]
    pub privileged: bool,
    /// Run an init process as PID 1 (reaps zombies, forwards signals).
    #[arg(long, help_heading = "Container")]
    pub init: bool,
    /// The user the container runs as: NAME, UID or UID:GID.
    #[arg(long, value_name = "USER", help_heading = "Container")]
    pub user: Option<String>,
    /// Neuron devices (Inferentia, Trainium) to expose [EC2].
    #[arg(long, value_name = "N", help_heading = "Container")]
    pub neuron: Option<String>,
    /// Ephemeral storage in GiB, 21-200 [Fargate].
    #[arg(long, value_name = "GIB", help_heading = "Container")]
    pub ephemeral_storage: Option<String>,
    /// CloudWatch log group for the job's output (logs and run read it from there).
    #[arg(long, value_name = "GROUP", help_heading = "Container")]
    pub log_group: Option<String>,
    /// An awslogs driver option, e.g. awslogs-stream-prefix=train (repeatable).
    #[arg(long, value_name = "K=V", help_heading = "Container")]
    pub log_option: Vec<String>,

    /// Run N children (1-10,000); each gets its index in MFBATCH_ARRAY_INDEX.
    #[arg(long, value_name = "N", help_heading = "Arrays and scheduling")]
    pub array: Option<String>,
    /// Run the array's children one at a time, from index 0.
    #[arg(long, help_heading = "Arrays and scheduling")]
    pub array_sequential: bool,
    /// Child i gets line i of FILE as its arguments (after those given after `--`).
    #[arg(long, value_name = "FILE", help_heading = "Arrays and scheduling")]
    pub array_args: Option<PathBuf>,
    /// Show the last lines of the first K failed children (of `--array`) or nodes (of `--nodes`).
    #[arg(
        long,
        value_name = "K",
        default_value_t = 3,
        help_heading = "Arrays and scheduling"
    )]
    pub show_failed: usize,
    /// Stream child I's output live (repeatable, at most 20).
    #[arg(long, value_name = "I", help_heading = "Arrays and scheduling")]
    pub follow_index: Vec<usize>,
    /// A multi-node parallel job of N nodes, all running the script [EC2].
    #[arg(long, value_name = "N", help_heading = "Arrays and scheduling")]
    pub nodes: Option<String>,
    /// Start after this job succeeds; :N_TO_N pairs array children (repeatable).
    #[arg(
        long,
        value_name = "JOB_ID[:N_TO_N]",
        help_heading = "Arrays and scheduling"
    )]
    pub depends_on: Vec<String>,
    /// Scheduling priority in a fair-share queue, 0-9999.
    #[arg(long, value_name = "N", help_heading = "Arrays and scheduling")]
    pub priority: Option<String>,
    /// Fair-share identifier (required exactly when the queue has a scheduling policy).
    #[arg(long, value_name = "ID", help_heading = "Arrays and scheduling")]
    pub share: Option<String>,
}

/// Most children streamed live at once: each costs a log follower.
pub const MAX_FOLLOWED_CHILDREN: usize = 20;

impl BatchArgs {
    /// The flags that are settings, as the settings' text.
    pub fn setting_flags(&self) -> Vec<(BatchKey, String)> {
        let list = |items: &Vec<String>| (!items.is_empty()).then(|| list_value(items));
        let on = |set: bool| set.then(|| "true".to_owned());
        [
            (BatchKey::SharedMemory, self.shm.clone()),
            (BatchKey::Tmpfs, list(&self.tmpfs)),
            (BatchKey::MaxSwap, self.max_swap.clone()),
            (BatchKey::Swappiness, self.swappiness.clone()),
            (BatchKey::HostVolumes, list(&self.volume)),
            (BatchKey::EfsVolumes, list(&self.efs)),
            (BatchKey::Secrets, list(&self.secret)),
            (BatchKey::Ulimits, list(&self.ulimit)),
            (BatchKey::Privileged, on(self.privileged)),
            (BatchKey::Init, on(self.init)),
            (BatchKey::ContainerUser, self.user.clone()),
            (BatchKey::Neuron, self.neuron.clone()),
            (BatchKey::EphemeralStorage, self.ephemeral_storage.clone()),
            (BatchKey::LogGroup, self.log_group.clone()),
            (BatchKey::LogOptions, list(&self.log_option)),
            (BatchKey::Priority, self.priority.clone()),
            (BatchKey::Share, self.share.clone()),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v)))
        .collect()
    }

    /// `--follow-index` and `--show-failed` are about an array: checked against its size.
    pub fn check_following(&self, array_size: Option<u32>) -> Result<(), ConfigError> {
        let bad = |flag: &'static str, value: String, reason: &str| ConfigError::InvalidFlag {
            flag,
            value,
            reason: reason.to_owned(),
        };
        let Some(&index) = self.follow_index.first() else {
            return Ok(());
        };
        let Some(size) = array_size else {
            return Err(bad(
                "--follow-index",
                index.to_string(),
                "needs --array N (2 or more)",
            ));
        };
        if self.follow_index.len() > MAX_FOLLOWED_CHILDREN {
            return Err(bad(
                "--follow-index",
                self.follow_index.len().to_string(),
                "at most 20 children are streamed live (each reads its own log stream)",
            ));
        }
        if let Some(out) = self.follow_index.iter().find(|i| **i >= size as usize) {
            return Err(bad(
                "--follow-index",
                out.to_string(),
                &format!("the array's children are 0 to {}", size - 1),
            ));
        }
        Ok(())
    }

    pub fn schedule(&self) -> ScheduleOptions {
        ScheduleOptions {
            array: self.array.clone(),
            array_sequential: self.array_sequential,
            array_args: self.array_args.clone(),
            nodes: self.nodes.clone(),
            depends_on: self.depends_on.clone(),
        }
    }
}
