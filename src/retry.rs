//! How each class of AWS call is retried, in one place. One layer retries each class; the
//! others pass failures up, and a failure that lasts is reported rather than retried silently.
//!
//! | call class | who retries | how | when it gives up |
//! |---|---|---|---|
//! | reads and idempotent writes (Describe*, List*, HeadObject, PutObject with `If-None-Match`, UploadPart, RegisterJobDefinition*) | the SDK's standard retry | [`SDK_MAX_ATTEMPTS`] attempts, exponential back-off with jitter, on throttling, 5xx and I/O errors | after the last attempt: the error reaches the user |
//! | SubmitJob (creates a job; no client token) | `launch::submit` only | sent again at once only when certainly not processed (throttled, connection never opened), up to [`SUBMIT_TRIES`]; after an ambiguous failure, looked for first ([`SUBMIT_LOOKUP_WAITS`]) | after [`SUBMIT_TRIES`] sends, or when a look fails |
//! | SubmitJob right after RegisterJobDefinition | `launch::submit` | a "definition not found" answer waited for, [`DEFINITION_VISIBLE_TRIES`] tries | then the answer reaches the user |
//! | DescribeJobs while following | the tracker's poller (the SDK's attempts inside each poll) | every poll again, later | warns after [`STATUS_FAILURE_WARNING`], ends the follow after [`STATUS_FAILURE_LIMIT`]; access denied at once |
//! | GetLogEvents while following | the log follower, from the same token (nothing lost or repeated) | back-off to the idle interval | never, except access denied (a warning at once) |
//! | the package download in the container | the bootstrap | 6 tries, 1-20 s apart, on 5xx, 429 and network errors | exit 121 |
//!
//! *RegisterJobDefinition is not idempotent (a retry adds a revision), but every revision has
//! the same content, and reuse picks any ACTIVE one with that content: a spare revision is
//! harmless. CreateMultipartUpload retried leaves at most an empty upload, aborted with ours.

use std::time::Duration;

/// Attempts of every SDK call (the first included), except SubmitJob's.
pub const SDK_MAX_ATTEMPTS: u32 = 5;

/// Sends of one SubmitJob in all (the first included).
pub const SUBMIT_TRIES: u32 = 5;

/// Waits before each look for a job whose SubmitJob answer was lost: Batch lists a new job a
/// moment after creating it.
pub const SUBMIT_LOOKUP_WAITS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Tries of SubmitJob while a just-registered definition is not yet visible (0.5 + 1 + 2 s).
pub const DEFINITION_VISIBLE_TRIES: usize = 4;

/// DescribeJobs failing this long for a followed job is reported as a warning…
pub const STATUS_FAILURE_WARNING: Duration = Duration::from_secs(30);

/// …and this long ends following it, with an error.
pub const STATUS_FAILURE_LIMIT: Duration = Duration::from_secs(300);
