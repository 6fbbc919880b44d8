//! The AWS side of a Metaflow deployment as one CloudFormation stack: deploy (create or update)
//! mfbatch's template, read a stack's status and outputs, delete it. Progress is reported as
//! typed [`StackEvent`]s while CloudFormation works; the caller decides how to show them.
//!
//! Everything that reads a stack ([`describe`], [`outputs::settings_from_outputs`]) works on any
//! stack with the outputs of [`outputs::OUTPUT_SETTINGS`], however it was deployed.

pub mod outputs;
pub mod template;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aws_sdk_cloudformation::types::{Capability, Parameter, Stack};
use serde::Serialize;

use crate::aws::Clients;
use crate::error::{AwsError, AwsErrorKind, Service};
use crate::event::{Event, EventSink};

/// Why a stack operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("stack {stack:?} does not exist in region {region}")]
    NotFound { stack: String, region: String },
    /// The operation ended in a failed or rolled-back state.
    #[error("stack {stack:?} ended {status}{}", failure_text(resource, reason))]
    Failed {
        stack: String,
        status: String,
        /// The first resource that failed, and why.
        resource: Option<String>,
        reason: Option<String>,
    },
    /// Another operation is still running on the stack.
    #[error("stack {stack:?} is busy ({status})")]
    Busy { stack: String, status: String },
    /// A first creation failed and rolled back: CloudFormation cannot update such a stack.
    #[error("stack {stack:?} is {status}: its creation failed, so it cannot be updated")]
    NeedsDelete { stack: String, status: String },
    #[error("invalid --param {value:?}: {reason}")]
    BadParameter { value: String, reason: String },
    #[error("stack {stack:?} has no output {}", missing.join(", "))]
    MissingOutputs {
        stack: String,
        missing: Vec<&'static str>,
    },
}

fn failure_text(resource: &Option<String>, reason: &Option<String>) -> String {
    match (resource, reason) {
        (Some(resource), Some(reason)) => format!(": {resource} failed: {reason}"),
        (Some(resource), None) => format!(": {resource} failed"),
        (None, Some(reason)) => format!(": {reason}"),
        (None, None) => String::new(),
    }
}

impl StackError {
    pub fn hint(&self) -> Option<String> {
        match self {
            StackError::Aws(e) => e.hint(),
            StackError::NotFound { .. } => Some(
                "check the name and AWS_REGION; `aws cloudformation list-stacks` lists the stacks"
                    .into(),
            ),
            StackError::Busy { stack, .. } => Some(format!(
                "wait for it to finish (`mfbatch stack status {stack}`), then try again"
            )),
            StackError::NeedsDelete { stack, .. } => Some(format!(
                "delete it (`mfbatch stack delete {stack}`; the bucket is kept), then deploy again"
            )),
            StackError::BadParameter { .. } => Some(format!(
                "the template's parameters: {}",
                template::parameter_names().join(", ")
            )),
            StackError::MissingOutputs { .. } => Some(
                "the stack was not built from mfbatch's or Metaflow's template; set the values with `mfbatch configure aws`".into(),
            ),
            StackError::Failed { stack, .. } => Some(format!(
                "`aws cloudformation describe-stack-events --stack-name {stack}` shows every event"
            )),
        }
    }

    /// Whether the user's input is at fault (exit code 2) rather than AWS or the stack.
    pub fn is_usage(&self) -> bool {
        match self {
            StackError::Aws(e) => e.kind == AwsErrorKind::Credentials,
            StackError::BadParameter { .. } | StackError::NotFound { .. } => true,
            _ => false,
        }
    }
}

/// One thing CloudFormation did to one resource (or to the stack itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackEvent {
    pub stack: String,
    /// The template's logical id (the stack's own name for the stack itself).
    pub resource: String,
    pub resource_type: String,
    /// e.g. `CREATE_IN_PROGRESS`, `CREATE_COMPLETE`, `CREATE_FAILED`.
    pub status: String,
    pub reason: Option<String>,
    pub timestamp_ms: Option<i64>,
}

impl StackEvent {
    pub fn is_failure(&self) -> bool {
        self.status.ends_with("_FAILED")
    }

    /// Whether the event is about the stack as a whole rather than one of its resources.
    pub fn is_stack(&self) -> bool {
        self.resource_type == "AWS::CloudFormation::Stack"
    }
}

/// A stack as DescribeStacks tells it.
#[derive(Debug, Clone, Serialize)]
pub struct StackInfo {
    pub name: String,
    pub id: String,
    pub status: String,
    pub reason: Option<String>,
    pub outputs: BTreeMap<String, String>,
    pub parameters: BTreeMap<String, String>,
}

impl StackInfo {
    fn from_sdk(stack: &Stack) -> Self {
        StackInfo {
            name: stack.stack_name().unwrap_or_default().to_owned(),
            id: stack.stack_id().unwrap_or_default().to_owned(),
            status: stack
                .stack_status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            reason: stack.stack_status_reason().map(str::to_owned),
            outputs: stack
                .outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
                .collect(),
            parameters: stack
                .parameters()
                .iter()
                .filter_map(|p| {
                    Some((
                        p.parameter_key()?.to_owned(),
                        p.parameter_value().unwrap_or_default().to_owned(),
                    ))
                })
                .collect(),
        }
    }

    /// The datastore bucket, which outlives the stack.
    pub fn bucket(&self) -> Option<String> {
        if let Some(name) = self.outputs.get("MetaflowS3BucketName") {
            return Some(name.clone());
        }
        let url = self.outputs.get("MetaflowDataStoreS3Url")?;
        crate::s3url::S3Url::parse(url).ok().map(|u| u.bucket)
    }

    /// Whether no operation is running on the stack.
    pub fn is_settled(&self) -> bool {
        !self.status.ends_with("_IN_PROGRESS")
    }
}

/// What [`deploy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Created,
    Updated,
    /// The stack already had this template and these parameters.
    Unchanged,
}

/// The result of [`deploy`].
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub change: Change,
    pub stack: StackInfo,
}

/// How often to look at a stack's events while an operation runs.
#[derive(Debug, Clone, Copy)]
pub struct PollOptions {
    pub first: Duration,
    pub max: Duration,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            first: Duration::from_millis(500),
            max: Duration::from_secs(5),
        }
    }
}

/// `KEY=VALUE` pairs from `--param`, checked against the template's parameters.
pub fn parse_parameters(pairs: &[String]) -> Result<BTreeMap<String, String>, StackError> {
    let known = template::parameter_names();
    let mut out = BTreeMap::new();
    for pair in pairs {
        let bad = |reason: &str| StackError::BadParameter {
            value: pair.clone(),
            reason: reason.into(),
        };
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        if !known.contains(&key) {
            return Err(bad("the template has no such parameter"));
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// The stack, or `None` when there is none of that name.
pub async fn describe(clients: &Clients, name: &str) -> Result<Option<StackInfo>, StackError> {
    match clients
        .cloudformation
        .describe_stacks()
        .stack_name(name)
        .send()
        .await
    {
        Ok(out) => Ok(out.stacks().first().map(StackInfo::from_sdk)),
        // CloudFormation says "does not exist" with a generic ValidationError, nothing finer.
        Err(e) if is_missing_stack(&e) => Ok(None),
        Err(e) => Err(AwsError::from_sdk(Service::CloudFormation, "DescribeStacks", e).into()),
    }
}

fn is_missing_stack<E, R>(err: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> bool
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
    err.code() == Some("ValidationError")
        && err.message().is_some_and(|m| m.contains("does not exist"))
}

/// The stack, or [`StackError::NotFound`].
pub async fn require(clients: &Clients, name: &str) -> Result<StackInfo, StackError> {
    describe(clients, name)
        .await?
        .ok_or_else(|| StackError::NotFound {
            stack: name.to_owned(),
            region: clients.region().to_owned(),
        })
}

/// Creates the stack from mfbatch's template, or updates it when it exists (parameters not given
/// keep their current values), and follows its events to the end.
pub async fn deploy(
    clients: &Clients,
    name: &str,
    parameters: &BTreeMap<String, String>,
    poll: PollOptions,
    events: &EventSink,
) -> Result<Deployed, StackError> {
    let existing = describe(clients, name).await?;
    let (change, seen) = match existing {
        // A stack that never got created behaves like none.
        Some(stack) if stack.status == "REVIEW_IN_PROGRESS" => (Change::Created, HashSet::new()),
        Some(stack) if !stack.is_settled() => {
            return Err(StackError::Busy {
                stack: name.to_owned(),
                status: stack.status,
            })
        }
        Some(stack) if stack.status == "ROLLBACK_COMPLETE" || stack.status == "ROLLBACK_FAILED" => {
            return Err(StackError::NeedsDelete {
                stack: name.to_owned(),
                status: stack.status,
            })
        }
        Some(stack) => {
            // Events before the update are the last deploy's, not this one's.
            let seen = event_ids(clients, name).await?;
            if !send_update(clients, name, &stack, parameters).await? {
                return Ok(Deployed {
                    change: Change::Unchanged,
                    stack,
                });
            }
            (Change::Updated, seen)
        }
        None => (Change::Created, HashSet::new()),
    };
    if change == Change::Created {
        clients
            .cloudformation
            .create_stack()
            .stack_name(name)
            .template_body(template::TEMPLATE)
            .capabilities(Capability::CapabilityIam)
            .set_parameters(Some(parameters.iter().map(|(k, v)| given(k, v)).collect()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Service::CloudFormation, "CreateStack", e))?;
    }
    let stack = follow(clients, name, seen, poll, events).await?;
    let succeeded = matches!(stack.status.as_str(), "CREATE_COMPLETE" | "UPDATE_COMPLETE");
    if !succeeded {
        return Err(failed(clients, &stack).await);
    }
    Ok(Deployed { change, stack })
}

fn given(key: &str, value: &str) -> Parameter {
    Parameter::builder()
        .parameter_key(key)
        .parameter_value(value)
        .build()
}

/// Sends UpdateStack with the given parameters, the others keeping their values; false when
/// CloudFormation says there is nothing to update.
async fn send_update(
    clients: &Clients,
    name: &str,
    stack: &StackInfo,
    parameters: &BTreeMap<String, String>,
) -> Result<bool, StackError> {
    let mut list: Vec<Parameter> = parameters.iter().map(|(k, v)| given(k, v)).collect();
    for key in stack.parameters.keys() {
        if !parameters.contains_key(key) {
            list.push(
                Parameter::builder()
                    .parameter_key(key)
                    .use_previous_value(true)
                    .build(),
            );
        }
    }
    let sent = clients
        .cloudformation
        .update_stack()
        .stack_name(name)
        .template_body(template::TEMPLATE)
        .capabilities(Capability::CapabilityIam)
        .set_parameters(Some(list))
        .send()
        .await;
    match sent {
        Ok(_) => Ok(true),
        Err(e) if is_no_update(&e) => Ok(false),
        Err(e) => Err(AwsError::from_sdk(Service::CloudFormation, "UpdateStack", e).into()),
    }
}

fn is_no_update<E, R>(err: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> bool
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
    err.code() == Some("ValidationError") && err.message().is_some_and(|m| m.contains("No updates"))
}

/// What [`delete`] left behind.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    pub stack: String,
    /// The datastore bucket, which the template retains (with its data).
    pub retained_bucket: Option<String>,
}

/// Deletes the stack and follows its events to the end.
pub async fn delete(
    clients: &Clients,
    name: &str,
    poll: PollOptions,
    events: &EventSink,
) -> Result<Deleted, StackError> {
    let stack = require(clients, name).await?;
    if !stack.is_settled() && stack.status != "DELETE_IN_PROGRESS" {
        return Err(StackError::Busy {
            stack: name.to_owned(),
            status: stack.status,
        });
    }
    let seen = event_ids(clients, &stack.id).await?;
    clients
        .cloudformation
        .delete_stack()
        .stack_name(&stack.id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(Service::CloudFormation, "DeleteStack", e))?;
    // Followed by id: once deleted, the name no longer finds it.
    let after = follow(clients, &stack.id, seen, poll, events).await?;
    if after.status != "DELETE_COMPLETE" {
        return Err(failed(clients, &after).await);
    }
    Ok(Deleted {
        stack: name.to_owned(),
        retained_bucket: stack.bucket(),
    })
}

/// Reports new events until the stack settles, then returns it. A stack that vanishes while
/// followed (deleted by name) counts as `DELETE_COMPLETE`.
async fn follow(
    clients: &Clients,
    stack: &str,
    mut seen: HashSet<String>,
    poll: PollOptions,
    events: &EventSink,
) -> Result<StackInfo, StackError> {
    let mut wait = poll.first;
    loop {
        for event in new_events(clients, stack, &mut seen).await? {
            events(Event::Stack(event));
        }
        let info = match describe(clients, stack).await? {
            Some(info) => info,
            None => {
                return Ok(StackInfo {
                    name: stack.to_owned(),
                    id: stack.to_owned(),
                    status: "DELETE_COMPLETE".into(),
                    reason: None,
                    outputs: BTreeMap::new(),
                    parameters: BTreeMap::new(),
                })
            }
        };
        if info.is_settled() {
            // The last events may have arrived with the final status.
            for event in new_events(clients, stack, &mut seen).await? {
                events(Event::Stack(event));
            }
            return Ok(info);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(poll.max);
    }
}

/// The ids of the events the stack already has, so that following reports only new ones.
async fn event_ids(clients: &Clients, stack: &str) -> Result<HashSet<String>, StackError> {
    let mut seen = HashSet::new();
    let _ = new_events(clients, stack, &mut seen).await?;
    Ok(seen)
}

/// Events not in `seen`, oldest first (CloudFormation lists newest first, by pages). Stops at the
/// first page holding an event already seen: everything after it is older.
async fn new_events(
    clients: &Clients,
    stack: &str,
    seen: &mut HashSet<String>,
) -> Result<Vec<StackEvent>, StackError> {
    let mut fresh = Vec::new();
    let mut token = None;
    loop {
        let out = match clients
            .cloudformation
            .describe_stack_events()
            .stack_name(stack)
            .set_next_token(token)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_missing_stack(&e) => break,
            Err(e) => {
                return Err(
                    AwsError::from_sdk(Service::CloudFormation, "DescribeStackEvents", e).into(),
                )
            }
        };
        let mut reached_seen = false;
        for e in out.stack_events() {
            let id = e.event_id().unwrap_or_default().to_owned();
            if !seen.insert(id) {
                reached_seen = true;
                continue;
            }
            fresh.push(StackEvent {
                stack: e.stack_name().unwrap_or(stack).to_owned(),
                resource: e.logical_resource_id().unwrap_or_default().to_owned(),
                resource_type: e.resource_type().unwrap_or_default().to_owned(),
                status: e
                    .resource_status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                reason: e.resource_status_reason().map(str::to_owned),
                timestamp_ms: e.timestamp().and_then(|t| t.to_millis().ok()),
            });
        }
        token = out.next_token().map(str::to_owned);
        if reached_seen || token.is_none() {
            break;
        }
    }
    fresh.reverse();
    Ok(fresh)
}

/// The failure of a stack that did not reach the wanted status: the first resource that failed
/// (the root cause; later failures are often "cancelled" knock-ons) and its reason.
async fn failed(clients: &Clients, stack: &StackInfo) -> StackError {
    let mut all = HashSet::new();
    let events = new_events(clients, &stack.id, &mut all)
        .await
        .unwrap_or_default();
    // Only the last operation's events: those after the stack's latest *_IN_PROGRESS event.
    let start = events
        .iter()
        .rposition(|e| {
            e.is_stack()
                && matches!(
                    e.status.as_str(),
                    "CREATE_IN_PROGRESS" | "UPDATE_IN_PROGRESS" | "DELETE_IN_PROGRESS"
                )
        })
        .unwrap_or(0);
    let first = events[start..]
        .iter()
        .find(|e| e.is_failure() && !e.is_stack())
        .or_else(|| events[start..].iter().find(|e| e.is_failure()));
    StackError::Failed {
        stack: stack.name.clone(),
        status: stack.status.clone(),
        resource: first.map(|e| e.resource.clone()),
        reason: first
            .and_then(|e| e.reason.clone())
            .or_else(|| stack.reason.clone()),
    }
}

/// The settings a stack's outputs fill (see [`outputs::settings_from_outputs`]).
pub fn settings_of(stack: &StackInfo) -> Result<BTreeMap<String, String>, StackError> {
    outputs::settings_from_outputs(&stack.outputs).map_err(|missing| StackError::MissingOutputs {
        stack: stack.name.clone(),
        missing,
    })
}
