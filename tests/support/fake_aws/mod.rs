//! A stateful fake of the AWS APIs mfbatch calls — Batch (REST-JSON), CloudWatch Logs (JSON 1.1)
//! and S3 (path-style REST-XML) — behind ONE wiremock server whose single catch-all mock hands
//! every request to shared state, so tests assert on what AWS would hold afterwards.
//!
//! - Setup: a default queue [`QUEUE`] (one EC2 compute environment, 256 vCPUs) and bucket
//!   [`BUCKET`]; more with [`FakeAws::add_queue`] and [`FakeAws::create_bucket`].
//! - Jobs follow a [`Timeline`], advancing one step per DescribeJobs call that includes them
//!   ([`FakeAws::script_next_job`], [`FakeAws::set_default_timeline`]).
//! - Faults: scripted per operation ([`FakeAws::fail_next`], [`FakeAws::fail_always`]) or random
//!   from a seeded RNG ([`FakeAws::set_random_faults`]). A faulted call changes nothing, except
//!   [`Fault::ServerErrorAfterEffect`], which does the call and then answers 500.
//! - Accounting: every request is recorded with its operation name and body
//!   ([`FakeAws::calls`], [`FakeAws::requests`], [`FakeAws::mutating_calls`]).

mod batch;
mod logs;
mod s3;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_batch::config::{Credentials, Region, SharedCredentialsProvider};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use mfbatch::aws::{ClientOptions, Clients};
use serde_json::Value;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub use batch::{ArrayScript, AttemptEnd, JobView, NodesScript, QueueSpec, Timeline};
pub use mfbatch::event::JobStatus;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "test-bucket";
pub const QUEUE: &str = "test-queue";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/test";
pub const SYSROOT: &str = "s3://test-bucket/metaflow";
pub const IMAGE: &str = "python:3.11";
/// Where Batch sends container logs.
pub const BATCH_LOG_GROUP: &str = "/aws/batch/job";

/// A failure the fake answers with instead of doing the call, in each service's own wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Batch: HTTP 429 `TooManyRequestsException`; Logs: HTTP 400 `ThrottlingException`;
    /// S3: HTTP 503 `SlowDown`. The SDK retries all three.
    Throttle,
    /// HTTP 500 (retried by the SDK on status alone).
    ServerError,
    /// HTTP 403 (Logs: 400) `AccessDenied[Exception]`; not retried.
    AccessDenied,
    /// Holds the request this long, then answers HTTP 500 (a call that hangs).
    Hang(Duration),
    /// Does the call, then answers HTTP 500 as if it had failed: the client cannot know that it
    /// took effect (the worst case for calls that create something).
    ServerErrorAfterEffect,
    /// Any status and error code, e.g. `(400, "ClientException", "...")`.
    Custom {
        status: u16,
        code: String,
        message: String,
    },
    /// This exact answer (for a malformed or incomplete success, say): status and body, sent as
    /// XML to S3 calls and as JSON to the others.
    Raw { status: u16, body: String },
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The API operation, e.g. `SubmitJob`, `GetLogEvents`, `PutObject`.
    pub op: String,
    /// The JSON body (Batch, Logs), or a summary `{bucket, key, bytes}` (S3).
    pub body: Value,
    /// Whether the fake answered with a fault instead of doing the call.
    pub faulted: bool,
}

#[derive(Debug)]
struct ScriptedFault {
    op: String,
    /// `None`: every call.
    remaining: Option<usize>,
    fault: Fault,
}

#[derive(Debug)]
struct RandomFaults {
    throttle: f64,
    server_error: f64,
    /// Only these operations (empty: all).
    only: BTreeSet<String>,
}

/// Everything the fake AWS holds.
#[derive(Debug)]
pub(crate) struct State {
    queues: BTreeMap<String, batch::Queue>,
    compute_envs: BTreeMap<String, batch::ComputeEnv>,
    definitions: BTreeMap<String, Vec<batch::Definition>>,
    jobs: BTreeMap<String, batch::Job>,
    job_order: Vec<String>,
    scripted: VecDeque<Timeline>,
    scripted_arrays: VecDeque<batch::ArrayScript>,
    scripted_nodes: VecDeque<batch::NodesScript>,
    /// Timelines move on with [`FakeAws::tick`] only, not with DescribeJobs calls.
    clocked: bool,
    default_timeline: Timeline,
    terminate_exit_code: Option<i32>,
    buckets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    uploads: BTreeMap<String, s3::Upload>,
    log_groups: BTreeMap<String, BTreeMap<String, logs::LogStream>>,
    log_page_size: usize,
    empty_log_page_every: usize,
    forward_data_reads: usize,
    last_log_ms: i64,
    /// The last job's `createdAt`: each job's is later, so "newest first" has one answer.
    last_created_ms: i64,
    next_event_id: u64,
    filter_calls: usize,
    empty_filter_page_every: usize,
    scripted_faults: Vec<ScriptedFault>,
    random_faults: Option<RandomFaults>,
    fault_rng: fastrand::Rng,
    id_rng: fastrand::Rng,
    calls: Vec<Call>,
}

impl State {
    fn new(seed: u64) -> Self {
        let mut state = State {
            queues: BTreeMap::new(),
            compute_envs: BTreeMap::new(),
            definitions: BTreeMap::new(),
            jobs: BTreeMap::new(),
            job_order: Vec::new(),
            scripted: VecDeque::new(),
            scripted_arrays: VecDeque::new(),
            scripted_nodes: VecDeque::new(),
            clocked: false,
            default_timeline: Timeline::default(),
            terminate_exit_code: Some(143),
            buckets: BTreeMap::new(),
            uploads: BTreeMap::new(),
            log_groups: BTreeMap::new(),
            log_page_size: 1000,
            empty_log_page_every: 0,
            forward_data_reads: 0,
            last_log_ms: 0,
            last_created_ms: 0,
            next_event_id: 0,
            filter_calls: 0,
            empty_filter_page_every: 0,
            scripted_faults: Vec::new(),
            random_faults: None,
            fault_rng: fastrand::Rng::with_seed(seed),
            id_rng: fastrand::Rng::with_seed(seed ^ 0x05ee_d1d5),
            calls: Vec::new(),
        };
        state.add_queue(QueueSpec::new(QUEUE).compute_environment("test-ce", "EC2", 256));
        state.buckets.insert(BUCKET.to_owned(), BTreeMap::new());
        state
    }

    /// A timestamp for a new log line: wall-clock milliseconds, strictly increasing.
    fn next_log_ms(&mut self) -> i64 {
        self.last_log_ms = now_ms().max(self.last_log_ms + 1);
        self.last_log_ms
    }

    fn hex_id(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from_digit(self.id_rng.u32(0..16), 16).expect("a hex digit"))
            .collect()
    }

    fn uuid(&mut self) -> String {
        let h = self.hex_id(32);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    /// The fault to answer this call with, if any; consumes scripted faults.
    fn take_fault(&mut self, op: &str) -> Option<Fault> {
        if let Some(i) = self.scripted_faults.iter().position(|f| f.op == op) {
            let scripted = &mut self.scripted_faults[i];
            let fault = scripted.fault.clone();
            match &mut scripted.remaining {
                None => {}
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        self.scripted_faults.remove(i);
                    }
                }
            }
            return Some(fault);
        }
        let random = self.random_faults.as_ref()?;
        if !random.only.is_empty() && !random.only.contains(op) {
            return None;
        }
        let (throttle, server_error) = (random.throttle, random.server_error);
        let roll = self.fault_rng.f64();
        if roll < throttle {
            Some(Fault::Throttle)
        } else if roll < throttle + server_error {
            Some(Fault::ServerError)
        } else {
            None
        }
    }

    fn handle(&mut self, req: &Request) -> ResponseTemplate {
        let service = Service::of(req);
        let (op, body) = match service {
            Service::Batch => batch::operation(req),
            Service::Logs => logs::operation(req),
            Service::S3 => s3::operation(req),
        };
        let fault = self.take_fault(&op);
        self.calls.push(Call {
            op: op.clone(),
            body: body.clone(),
            faulted: fault.is_some(),
        });
        let head = req.method.as_str() == "HEAD";
        match fault {
            None => {}
            Some(Fault::Hang(delay)) => {
                return fault_response(service, &op, &Fault::ServerError, head).set_delay(delay)
            }
            Some(Fault::ServerErrorAfterEffect) => {
                let _ = match service {
                    Service::Batch => self.batch(&op, &body),
                    Service::Logs => self.logs(&op, &body),
                    Service::S3 => self.s3(&op, req),
                };
                return fault_response(service, &op, &Fault::ServerError, head);
            }
            Some(fault) => return fault_response(service, &op, &fault, head),
        }
        match service {
            Service::Batch => self.batch(&op, &body),
            Service::Logs => self.logs(&op, &body),
            Service::S3 => self.s3(&op, req),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Batch,
    Logs,
    S3,
}

impl Service {
    fn of(req: &Request) -> Service {
        if req.headers.contains_key("x-amz-target") {
            Service::Logs
        } else if req.url.path().starts_with("/v1/") {
            Service::Batch
        } else {
            Service::S3
        }
    }
}

fn fault_response(service: Service, op: &str, fault: &Fault, head: bool) -> ResponseTemplate {
    let denied = |prefix: &str| {
        format!("User: arn:aws:sts::{ACCOUNT}:assumed-role/test/tester is not authorized to perform: {prefix}:{op}")
    };
    if let Fault::Raw { status, body } = fault {
        let content_type = if service == Service::S3 {
            "application/xml"
        } else {
            "application/json"
        };
        return ResponseTemplate::new(*status).set_body_raw(body.clone(), content_type);
    }
    match service {
        Service::Batch => match fault {
            Fault::Throttle => batch::error(429, "TooManyRequestsException", "Too Many Requests"),
            Fault::ServerError | Fault::Hang(_) | Fault::ServerErrorAfterEffect => {
                batch::error(500, "ServerException", "Internal Server Error")
            }
            Fault::AccessDenied => batch::error(403, "AccessDeniedException", &denied("batch")),
            Fault::Custom {
                status,
                code,
                message,
            } => batch::error(*status, code, message),
            Fault::Raw { .. } => unreachable!("answered above"),
        },
        Service::Logs => match fault {
            Fault::Throttle => logs::error(400, "ThrottlingException", "Rate exceeded"),
            Fault::ServerError | Fault::Hang(_) | Fault::ServerErrorAfterEffect => logs::error(
                500,
                "ServiceUnavailableException",
                "The service is unavailable",
            ),
            Fault::AccessDenied => logs::error(400, "AccessDeniedException", &denied("logs")),
            Fault::Custom {
                status,
                code,
                message,
            } => logs::error(*status, code, message),
            Fault::Raw { .. } => unreachable!("answered above"),
        },
        Service::S3 => match fault {
            Fault::Throttle => s3::error(503, "SlowDown", "Please reduce your request rate.", head),
            Fault::ServerError | Fault::Hang(_) | Fault::ServerErrorAfterEffect => s3::error(
                500,
                "InternalError",
                "We encountered an internal error.",
                head,
            ),
            Fault::AccessDenied => s3::error(403, "AccessDenied", "Access Denied", head),
            Fault::Custom {
                status,
                code,
                message,
            } => s3::error(*status, code, message, head),
            Fault::Raw { .. } => unreachable!("answered above"),
        },
    }
}

struct Dispatcher(Arc<Mutex<State>>);

impl Respond for Dispatcher {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        lock(&self.0).handle(request)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in one handler must not hide every later request's answer.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Moves the fake's jobs on in time rather than with each DescribeJobs (see [`FakeAws::clock`]).
#[derive(Clone)]
pub struct Clock(Arc<Mutex<State>>);

impl Clock {
    /// One step of each of these jobs' timelines (as one DescribeJobs of each did before), so how
    /// often a client polls changes nothing from now on.
    pub fn tick(&self, ids: &[String]) {
        let mut state = lock(&self.0);
        state.clocked = true;
        for id in ids {
            state.step(id);
        }
    }
}

/// The fake AWS: one wiremock server and the state behind it.
pub struct FakeAws {
    server: MockServer,
    state: Arc<Mutex<State>>,
}

impl FakeAws {
    /// Starts the fake with the default seed (ids and random faults are reproducible).
    pub async fn start() -> Self {
        Self::start_with_seed(7).await
    }

    pub async fn start_with_seed(seed: u64) -> Self {
        // The fake keeps its own call log; wiremock need not keep every body too.
        let server = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        let state = Arc::new(Mutex::new(State::new(seed)));
        Mock::given(wiremock::matchers::any())
            .respond_with(Dispatcher(state.clone()))
            .mount(&server)
            .await;
        FakeAws { server, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    // ---- setup -------------------------------------------------------------------------------

    /// Adds (or replaces) a job queue and its compute environments.
    pub fn add_queue(&self, queue: QueueSpec) {
        self.state().add_queue(queue);
    }

    pub fn create_bucket(&self, name: &str) {
        self.state().buckets.entry(name.to_owned()).or_default();
    }

    /// Stores an object directly (the bucket is created if needed).
    pub fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        self.state()
            .buckets
            .entry(bucket.to_owned())
            .or_default()
            .insert(key.to_owned(), bytes.to_vec());
    }

    /// The timeline of the next submitted job (queued: one per SubmitJob, in order).
    pub fn script_next_job(&self, timeline: Timeline) {
        self.state().scripted.push_back(timeline);
    }

    /// How the next multi-node job behaves (its nodes' timelines, or moto's shape).
    pub fn script_next_nodes(&self, script: NodesScript) {
        self.state().scripted_nodes.push_back(script);
    }

    /// A clock for this fake: from its first tick on, jobs move on only when ticked.
    pub fn clock(&self) -> Clock {
        Clock(self.state.clone())
    }

    /// When (epoch ms) each node of a multi-node job stopped.
    pub fn nodes_stopped_at(&self, parent_id: &str) -> BTreeMap<usize, i64> {
        self.state().nodes_stopped_at(parent_id)
    }

    /// How the next array job's children and parent behave (queued: one per array SubmitJob).
    pub fn script_next_array(&self, script: ArrayScript) {
        self.state().scripted_arrays.push_back(script);
    }

    /// When (epoch ms) each failed child of array `parent_id` was first seen FAILED (at a
    /// parent describe), by index.
    pub fn children_failed_at(&self, parent_id: &str) -> BTreeMap<usize, i64> {
        self.state().children_failed_at(parent_id)
    }

    /// The timeline of jobs with no scripted one (default: [`Timeline::default`]).
    pub fn set_default_timeline(&self, timeline: Timeline) {
        self.state().default_timeline = timeline;
    }

    /// The container exit code a TerminateJob gives a RUNNING job (default 143, SIGTERM).
    pub fn set_terminate_exit_code(&self, code: Option<i32>) {
        self.state().terminate_exit_code = code;
    }

    /// Appends lines to a log stream (created if missing), timestamped now, 1 ms apart.
    pub fn add_log_lines(&self, group: &str, stream: &str, lines: &[&str]) {
        let mut state = self.state();
        // Each stream's own clock: now, but never before its last line (a global counter
        // would run ahead of the wall clock by a millisecond per line across 10,000 streams).
        let now = now_ms();
        let mut last = state
            .stream_mut(group, stream)
            .events
            .last()
            .map_or(0, |e| e.0);
        let events: Vec<(i64, String)> = lines
            .iter()
            .map(|l| {
                last = now.max(last + 1);
                (last, (*l).to_owned())
            })
            .collect();
        state.last_log_ms = state.last_log_ms.max(last);
        state.append(group, stream, events);
    }

    /// Appends events with explicit timestamps (milliseconds since the epoch).
    pub fn add_log_events(&self, group: &str, stream: &str, events: &[(i64, &str)]) {
        let mut state = self.state();
        let events = events.iter().map(|(t, m)| (*t, (*m).to_owned())).collect();
        state.append(group, stream, events);
    }

    /// Lines that appear in the stream only after `reads` GetLogEvents calls on it.
    pub fn add_log_lines_after_reads(
        &self,
        group: &str,
        stream: &str,
        reads: usize,
        lines: &[&str],
    ) {
        let mut state = self.state();
        state.stream_mut(group, stream).pending.push(logs::Pending {
            release: logs::Release::AfterReads(reads),
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
        });
    }

    /// The most events one GetLogEvents page holds (default 1000; `limit` may ask for fewer).
    pub fn set_log_page_size(&self, events: usize) {
        assert!(events > 0);
        self.state().log_page_size = events;
    }

    /// Every `n`th FilterLogEvents call that has data answers an empty page with a token that
    /// resumes where it was, as CloudWatch sometimes does (0: never).
    pub fn set_empty_filter_page_every(&self, n: usize) {
        assert!(n != 1, "every page empty would never progress");
        self.state().empty_filter_page_every = n;
    }

    /// Every `n`th forward GetLogEvents read that has data answers an empty page with a new
    /// token instead, as CloudWatch sometimes does (0: never).
    pub fn set_empty_log_page_every(&self, n: usize) {
        assert!(n != 1, "every read empty would never progress");
        self.state().empty_log_page_every = n;
    }

    // ---- faults ------------------------------------------------------------------------------

    /// The next `times` calls of `op` fail with `fault`.
    pub fn fail_next(&self, op: &str, times: usize, fault: Fault) {
        assert!(times > 0);
        self.state().scripted_faults.push(ScriptedFault {
            op: op.to_owned(),
            remaining: Some(times),
            fault,
        });
    }

    /// Every call of `op` fails with `fault`.
    pub fn fail_always(&self, op: &str, fault: Fault) {
        self.state().scripted_faults.push(ScriptedFault {
            op: op.to_owned(),
            remaining: None,
            fault,
        });
    }

    /// A fraction of all calls (or only of `only`'s operations) throttled or failed with a
    /// 500, decided by the seeded RNG.
    pub fn set_random_faults(&self, throttle: f64, server_error: f64, only: &[&str]) {
        self.state().random_faults = Some(RandomFaults {
            throttle,
            server_error,
            only: only.iter().map(|s| (*s).to_owned()).collect(),
        });
    }

    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.scripted_faults.clear();
        state.random_faults = None;
    }

    // ---- accounting --------------------------------------------------------------------------

    /// How many calls of `op` arrived (faulted ones included).
    pub fn calls(&self, op: &str) -> usize {
        self.state().calls.iter().filter(|c| c.op == op).count()
    }

    /// How many requests arrived in all.
    pub fn total_calls(&self) -> usize {
        self.state().calls.len()
    }

    /// Every request, in arrival order.
    pub fn call_log(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The bodies of the calls of `op` (faulted ones included), in arrival order.
    pub fn requests(&self, op: &str) -> Vec<Value> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.op == op)
            .map(|c| c.body.clone())
            .collect()
    }

    /// The operations that would change something: anything but Describe*, List*, Get*, Head*.
    pub fn mutating_calls(&self) -> Vec<String> {
        self.state()
            .calls
            .iter()
            .filter(|c| is_mutating(&c.op))
            .map(|c| c.op.clone())
            .collect()
    }

    // ---- inspection --------------------------------------------------------------------------

    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.state().buckets.get(bucket)?.get(key).cloned()
    }

    pub fn object_keys(&self, bucket: &str) -> Vec<String> {
        self.state()
            .buckets
            .get(bucket)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Multipart uploads neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.state().uploads.len()
    }

    /// Registered job definitions: `(name, revision, RegisterJobDefinition body)`.
    pub fn definitions(&self) -> Vec<(String, i32, Value)> {
        self.state()
            .definitions
            .iter()
            .flat_map(|(name, revs)| {
                revs.iter()
                    .map(move |d| (name.clone(), d.revision, d.body.clone()))
            })
            .collect()
    }

    /// Every job, in submission order.
    pub fn jobs(&self) -> Vec<JobView> {
        let state = self.state();
        state
            .job_order
            .iter()
            .map(|id| state.jobs[id].view())
            .collect()
    }

    /// Moves a job's whole history `ms` into the past (a job that ended long ago).
    pub fn age_job(&self, id: &str, ms: i64) {
        self.state().jobs.get_mut(id).expect("a job").age(ms);
    }

    pub fn job(&self, id: &str) -> Option<JobView> {
        self.state().jobs.get(id).map(|j| j.view())
    }

    /// The visible events of a stream (pending lines not included).
    pub fn log_events(&self, group: &str, stream: &str) -> Vec<(i64, String)> {
        self.state()
            .log_groups
            .get(group)
            .and_then(|g| g.get(stream))
            .map(|s| s.events.clone())
            .unwrap_or_default()
    }

    // ---- clients -----------------------------------------------------------------------------

    /// A hermetic SDK configuration for this fake: fixed region and static credentials (nothing
    /// read from the environment or `~/.aws`), fast retries, short timeouts.
    pub fn sdk_config(&self) -> SdkConfig {
        Self::sdk_config_for(&self.uri())
    }

    /// [`FakeAws::sdk_config`] for a fake at `uri`, e.g. one serving from another process.
    pub fn sdk_config_for(uri: &str) -> SdkConfig {
        // The same idle-pool bound as mfbatch's own clients (`aws::Clients::from_environment`).
        Self::sdk_config_with_pool(uri, 16)
    }

    /// [`FakeAws::sdk_config_for`] opening a new connection for every request (for proxies
    /// that decide per connection).
    pub fn sdk_config_unpooled(uri: &str) -> SdkConfig {
        Self::sdk_config_with_pool(uri, 0)
    }

    fn sdk_config_with_pool(uri: &str, idle_per_host: usize) -> SdkConfig {
        let http = aws_smithy_http_client::Builder::new()
            .pool_max_idle_per_host(idle_per_host)
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDFAKEAWS",
                "fake-secret",
                None,
                None,
                "fake-aws",
            )))
            .endpoint_url(uri)
            .http_client(http)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(5))
                    .with_max_backoff(Duration::from_millis(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .build(),
            )
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .build()
    }

    /// mfbatch's clients, built from [`FakeAws::sdk_config`].
    pub fn clients(&self) -> Clients {
        Clients::from_sdk_config(&self.sdk_config(), &ClientOptions::default())
            .expect("the config has a region")
    }

    /// Submits one job per timeline through the SDK, as another client of the account would
    /// (under a minimal job definition registered for them), each with an end-record nonce as
    /// mfbatch gives its jobs; returns the ids in order.
    pub async fn submit_jobs(&self, timelines: Vec<Timeline>) -> Vec<String> {
        self.submit_jobs_with(timelines, None, "mfbatch-test").await
    }

    /// [`FakeAws::submit_jobs`] under a definition of this name (their streams start with it).
    pub async fn submit_jobs_under(
        &self,
        timelines: Vec<Timeline>,
        definition: &str,
    ) -> Vec<String> {
        self.submit_jobs_with(timelines, None, definition).await
    }

    /// [`FakeAws::submit_jobs`] with a retry strategy of `attempts` that retries any failure.
    pub async fn submit_jobs_with_retries(
        &self,
        timelines: Vec<Timeline>,
        attempts: i32,
    ) -> Vec<String> {
        self.submit_jobs_with(timelines, Some(attempts), "mfbatch-test")
            .await
    }

    async fn submit_jobs_with(
        &self,
        timelines: Vec<Timeline>,
        attempts: Option<i32>,
        definition_name: &str,
    ) -> Vec<String> {
        let clients = self.clients();
        let definition = clients
            .batch
            .register_job_definition()
            .job_definition_name(definition_name)
            .r#type(aws_sdk_batch::types::JobDefinitionType::Container)
            .container_properties(
                aws_sdk_batch::types::ContainerProperties::builder()
                    .image(IMAGE)
                    .build(),
            )
            .send()
            .await
            .expect("register a definition");
        let mut ids = Vec::with_capacity(timelines.len());
        for timeline in timelines {
            self.script_next_job(timeline);
            // As mfbatch does: a nonce for the end records the "bootstrap" writes.
            let nonce = aws_sdk_batch::types::KeyValuePair::builder()
                .name("MFBATCH_END_NONCE")
                .value(format!("fakenonce{}", ids.len()))
                .build();
            let out = clients
                .batch
                .submit_job()
                .job_name(format!("job{}", ids.len()))
                .job_queue(QUEUE)
                .job_definition(definition.job_definition_arn().unwrap_or_default())
                .container_overrides(
                    aws_sdk_batch::types::ContainerOverrides::builder()
                        .environment(nonce)
                        .build(),
                )
                .set_retry_strategy(attempts.map(|n| {
                    aws_sdk_batch::types::RetryStrategy::builder()
                        .attempts(n)
                        .build()
                }))
                .send()
                .await
                .expect("submit a job");
            ids.push(out.job_id().unwrap_or_default().to_owned());
        }
        ids
    }

    /// Submits an array of `size` children behaving as `script` says, through the SDK under a
    /// minimal definition, with an end-record nonce as mfbatch gives its jobs; the parent's id.
    pub async fn submit_array(&self, size: i32, script: ArrayScript) -> String {
        use aws_sdk_batch::types::{
            ArrayProperties, ContainerOverrides, ContainerProperties, JobDefinitionType,
            KeyValuePair,
        };
        self.script_next_array(script);
        let clients = self.clients();
        let def = clients
            .batch
            .register_job_definition()
            .job_definition_name("mfbatch-array")
            .r#type(JobDefinitionType::Container)
            .container_properties(ContainerProperties::builder().image(IMAGE).build())
            .send()
            .await
            .expect("register a definition");
        let nonce = KeyValuePair::builder()
            .name("MFBATCH_END_NONCE")
            .value("arraynonce")
            .build();
        clients
            .batch
            .submit_job()
            .job_name("sweep")
            .job_queue(QUEUE)
            .job_definition(def.job_definition_arn().unwrap_or_default())
            .array_properties(ArrayProperties::builder().size(size).build())
            .container_overrides(ContainerOverrides::builder().environment(nonce).build())
            .send()
            .await
            .expect("submit an array")
            .job_id()
            .unwrap_or_default()
            .to_owned()
    }

    /// Submits a multi-node job of `num_nodes` behaving as `script` says, as mfbatch does (one
    /// open node range, `nodeOverrides.numNodes`, an end-record nonce); the job's id.
    pub async fn submit_nodes(&self, num_nodes: i32, script: NodesScript) -> String {
        self.submit_nodes_with_attempts(num_nodes, None, script)
            .await
    }

    /// [`FakeAws::submit_nodes`] with a retry strategy of `attempts`.
    pub async fn submit_nodes_with_attempts(
        &self,
        num_nodes: i32,
        attempts: Option<i32>,
        script: NodesScript,
    ) -> String {
        use aws_sdk_batch::types::{
            ContainerOverrides, ContainerProperties, JobDefinitionType, KeyValuePair,
            NodeOverrides, NodeProperties, NodePropertyOverride, NodeRangeProperty, RetryStrategy,
        };
        self.script_next_nodes(script);
        let clients = self.clients();
        let range = NodeRangeProperty::builder()
            .target_nodes("0:")
            .container(ContainerProperties::builder().image(IMAGE).build())
            .build();
        let def = clients
            .batch
            .register_job_definition()
            .job_definition_name("mfbatch-nodes")
            .r#type(JobDefinitionType::Multinode)
            .node_properties(
                NodeProperties::builder()
                    .num_nodes(1)
                    .main_node(0)
                    .node_range_properties(range)
                    .build(),
            )
            .send()
            .await
            .expect("register a definition");
        let nonce = KeyValuePair::builder()
            .name("MFBATCH_END_NONCE")
            .value("nodesnonce")
            .build();
        let overrides = NodePropertyOverride::builder()
            .target_nodes("0:")
            .container_overrides(ContainerOverrides::builder().environment(nonce).build())
            .build();
        clients
            .batch
            .submit_job()
            .job_name("train")
            .job_queue(QUEUE)
            .job_definition(def.job_definition_arn().unwrap_or_default())
            .node_overrides(
                NodeOverrides::builder()
                    .num_nodes(num_nodes)
                    .node_property_overrides(overrides)
                    .build(),
            )
            .set_retry_strategy(attempts.map(|n| RetryStrategy::builder().attempts(n).build()))
            .send()
            .await
            .expect("submit a multi-node job")
            .job_id()
            .unwrap_or_default()
            .to_owned()
    }

    /// The whole environment of a spawned `mfbatch` (add `PATH` if it needs one): this fake as
    /// the endpoint, static credentials, no `~/.aws` files, and the Metaflow settings a run needs.
    pub fn cli_env(&self, home: &Path) -> Vec<(String, String)> {
        let home_str = home.display().to_string();
        [
            ("AWS_ENDPOINT_URL", self.uri()),
            ("AWS_ACCESS_KEY_ID", "AKIDFAKEAWS".into()),
            ("AWS_SECRET_ACCESS_KEY", "fake-secret".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            (
                "AWS_CONFIG_FILE",
                home.join(".aws-none/config").display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                home.join(".aws-none/credentials").display().to_string(),
            ),
            ("HOME", home_str),
            ("NO_COLOR", "1".into()),
            ("METAFLOW_DATASTORE_SYSROOT_S3", SYSROOT.into()),
            ("METAFLOW_BATCH_JOB_QUEUE", QUEUE.into()),
            ("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", ROLE.into()),
            ("METAFLOW_BATCH_CONTAINER_IMAGE", IMAGE.into()),
            ("METAFLOW_USER", "tester".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Whether an operation changes state (anything but Describe*, List*, Get*, Head*).
pub fn is_mutating(op: &str) -> bool {
    !["Describe", "List", "Get", "Head"]
        .iter()
        .any(|p| op.starts_with(p))
}
