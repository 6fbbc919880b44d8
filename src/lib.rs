//! mfbatch runs Metaflow-style Python steps on AWS Batch: it packages the code into a
//! content-addressed tarball on S3, registers (or reuses) a job definition, submits the job, and
//! follows its status and CloudWatch logs until it exits.
//!
//! The library never prints and never exits: it returns values and reports progress as typed
//! [`event::Event`]s. The `mfbatch` binary (feature `cli`, on by default) is one renderer of them.
//!
//! The launch path, in order:
//! [`settings::resolve`] → [`spec::build_spec`] → [`launch::prepare`] → [`launch::plan`] →
//! [`launch::execute`] (or [`launch::stage`] then [`launch::submit`]); then [`track::Tracker`]
//! follows the job. Embedded, the whole of `mfbatch run step.py` is:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use mfbatch::{aws, event, launch, settings, spec, track};
//!
//! let settings = settings::resolve(&settings::Sources::from_process(BTreeMap::new()))?;
//! let options = spec::RunOptions { script: "step.py".into(), ..Default::default() };
//! let spec = spec::build_spec(&settings, &options)?;
//! let clients = aws::Clients::from_environment(&aws::ClientOptions::default()).await?;
//! let events = event::discard(); // or a callback that renders or records them
//! let prepared = launch::prepare(spec, &events).await?;
//! let plan = launch::plan(&clients, &prepared).await?;
//! let submitted = launch::execute(&clients, &prepared, plan, &events).await?;
//!
//! let tracker = track::Tracker::new(&clients, track::TrackerConfig::default());
//! let mut handle = tracker.follow(track::FollowRequest::new(submitted.job_id));
//! while let Some(event) = handle.next_event().await {
//!     if let event::Event::Log { message, .. } = event {
//!         println!("{message}");
//!     }
//! }
//! let outcome = handle.wait().await?;
//! println!("exit code {:?}", outcome.exit_code);
//! # Ok(()) }
//! ```

pub mod aws;
pub mod bootstrap;
pub mod configure;
pub mod doctor;
pub mod error;
pub mod event;
pub mod launch;
pub mod local;
pub mod metadata;
pub mod retry;
pub mod s3url;
pub mod serve;
pub mod settings;
pub mod spec;
pub mod stack;
pub mod track;
