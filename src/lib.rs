//! mfbatch runs Metaflow-style Python steps on AWS Batch: it packages the code into a
//! content-addressed tarball on S3, registers (or reuses) a job definition, submits the job, and
//! follows its status and CloudWatch logs until it exits.
//!
//! The library never prints and never exits: it returns values and reports progress as typed
//! [`event::Event`]s. The `mfbatch` binary (feature `cli`, on by default) is one renderer of them.
//!
//! The launch path, in order:
//! [`settings::resolve`] → [`request::build_spec`] → [`launch::prepare`] → [`launch::plan`] →
//! [`launch::execute`].

pub mod aws;
pub mod bootstrap;
pub mod error;
pub mod event;
pub mod image;
pub mod jobdef;
pub mod launch;
pub mod local;
pub mod package;
pub mod queue;
pub mod request;
pub mod s3url;
pub mod settings;
pub mod spec;
pub mod store;
pub mod submit;
pub mod track;
