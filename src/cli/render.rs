//! Turns library events into what the user sees: the job's log lines on stdout, status and
//! progress on stderr (live bars only on a terminal), or one JSON event per line with `--output json`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use mfbatch::event::{Event, EventSink, JobStatus, Warning};
use mfbatch::track::array::{describe_groups, group_failures};
use tokio::sync::mpsc;

use super::args::Output;
use super::style::Style;
use super::words;

/// What to show and how.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions {
    pub output: Output,
    pub quiet: bool,
    pub style: Style,
    /// Prefix log lines with the job's name (several jobs at once).
    pub prefix_jobs: bool,
    pub timestamps: bool,
}

/// A running renderer: events go in through [`Renderer::sink`], are written by one task.
pub struct Renderer {
    sender: mpsc::UnboundedSender<Message>,
    task: tokio::task::JoinHandle<()>,
}

/// What the renderer's task receives; `Close` comes after every event sent before it.
pub enum Message {
    Event(Event),
    Close,
}

impl Renderer {
    pub fn start(options: RenderOptions) -> Self {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Message>();
        let task = tokio::spawn(async move {
            let mut writer = Writer::new(options);
            while let Some(Message::Event(event)) = receiver.recv().await {
                writer.write(&event);
                // Flush when the queue is drained: prompt for a trickle, cheap for a flood.
                if receiver.is_empty() {
                    writer.flush();
                }
            }
            writer.finish();
        });
        Renderer { sender, task }
    }

    pub fn sink(&self) -> EventSink {
        let sender = self.sender.clone();
        Arc::new(move |event| {
            let _ = sender.send(Message::Event(event));
        })
    }

    /// Writes everything sent so far, then stops (sinks still held elsewhere are ignored after).
    pub async fn finish(self) {
        let _ = self.sender.send(Message::Close);
        let _ = self.task.await;
    }
}

struct Writer {
    options: RenderOptions,
    /// Job output not yet written to stdout; written in one go, clear of any live bar.
    pending: Vec<u8>,
    /// The upload bar, then the status spinner (terminal only).
    bar: Option<ProgressBar>,
    /// Each followed job's last status, for the spinner.
    statuses: BTreeMap<String, JobStatus>,
    /// Children that failed since the last flush: shown as one grouped line.
    failed_children: Vec<(usize, Option<i32>, Option<String>)>,
}

/// Job output is written once this much is pending, even while more keeps coming.
const FLUSH_BYTES: usize = 1 << 16;

impl Writer {
    fn new(options: RenderOptions) -> Self {
        Writer {
            options,
            pending: Vec::with_capacity(FLUSH_BYTES),
            bar: None,
            statuses: BTreeMap::new(),
            failed_children: Vec::new(),
        }
    }

    fn flush(&mut self) {
        if !self.failed_children.is_empty() {
            let groups = group_failures(std::mem::take(&mut self.failed_children));
            let line = format!(
                "{} {}",
                self.options.style.error("failed children:"),
                describe_groups(&groups)
            );
            self.status(line);
        }
        if self.pending.is_empty() {
            return;
        }
        let write = || {
            let mut out = io::stdout().lock();
            let _ = out.write_all(&self.pending);
            let _ = out.flush();
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
        self.pending.clear();
    }

    /// Shows each job's status on a spinner line (terminal only, text output).
    fn update_spinner(&mut self, job_name: &str, status: JobStatus) {
        if !self.options.style.live || self.options.quiet {
            return;
        }
        self.statuses.insert(job_name.to_owned(), status);
        if self.statuses.values().all(|s| s.is_terminal()) {
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let message = if self.statuses.len() == 1 {
            format!("{job_name}: {status}")
        } else {
            let mut counts: BTreeMap<JobStatus, usize> = BTreeMap::new();
            for s in self.statuses.values() {
                *counts.entry(*s).or_default() += 1;
            }
            counts
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        bar.set_message(message);
        bar.reset_elapsed();
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.flush();
    }

    /// A status line on stderr, kept clear of any live bar.
    fn status(&mut self, line: String) {
        if self.options.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn write(&mut self, event: &Event) {
        if self.options.output == Output::Json {
            return self.write_json(event);
        }
        let style = self.options.style;
        match event {
            Event::Log {
                job_name,
                timestamp_ms,
                message,
                ..
            } => {
                // The job's output belongs to stdout, unchanged.
                self.write_log_line(job_name, *timestamp_ms, message);
                if self.pending.len() >= FLUSH_BYTES {
                    self.flush();
                }
            }
            Event::Warning(Warning::Notice { message }) => self.status(message.clone()),
            Event::Warning(warning) => self.status(format!(
                "{} {}",
                style.warning("warning:"),
                words::warning(warning)
            )),
            Event::UploadStarted { url, bytes } => self.upload_started(url, *bytes),
            Event::UploadProgress { sent, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*sent);
                }
            }
            Event::Uploaded { url, .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                self.status(format!("Uploaded {url}"));
            }
            Event::Status {
                job_name, status, ..
            } => {
                self.status(words::status(event, &style));
                self.update_spinner(job_name, *status);
            }
            // Said by the outcome (or, after Ctrl-C, by the command); JSON carries it.
            Event::StepExited { .. } | Event::ArrayDone { .. } | Event::AttemptStarted { .. } => {}
            // `stack` commands render their own events (stack_cmd).
            Event::Stack(_) => {}
            Event::ArrayProgress { .. }
            | Event::ChildFailed { .. }
            | Event::ChildLogTail { .. }
            | Event::NodesProgress { .. }
            | Event::NodeFailed { .. }
            | Event::NodeLogTail { .. } => self.write_parts(event),
            Event::Exited(outcome) => self.status(words::exited(outcome, &style)),
            other => {
                if let Some(line) = words::progress(other) {
                    self.status(line);
                }
            }
        }
    }

    fn write_json(&mut self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            self.pending.extend_from_slice(line.as_bytes());
            self.pending.push(b'\n');
        }
        if self.pending.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// The events of a job made of parts (an array's children, a multi-node job's nodes):
    /// counts, failures and their last lines.
    fn write_parts(&mut self, event: &Event) {
        let style = self.options.style;
        match event {
            Event::ArrayProgress {
                job_name,
                size,
                counts,
                ..
            } => self.array_progress(words::array_progress(job_name, *size, counts)),
            Event::ChildFailed {
                index,
                exit_code,
                reason,
                ..
            } => self
                .failed_children
                .push((*index, *exit_code, reason.clone())),
            Event::ChildLogTail {
                child_id,
                index,
                lines,
                ..
            } => {
                // After the failure's own line, which is grouped and written on flush.
                self.flush();
                self.status(words::child_tail(child_id, *index, lines, &style));
            }
            Event::NodesProgress {
                job_name,
                num_nodes,
                counts,
                ..
            } => self.array_progress(words::nodes_progress(job_name, *num_nodes, counts)),
            Event::NodeFailed {
                node_id,
                node_index,
                exit_code,
                reason,
                ..
            } => self.status(words::node_failed(
                node_id,
                *node_index,
                *exit_code,
                reason.as_deref(),
                &style,
            )),
            Event::NodeLogTail {
                node_id,
                node_index,
                lines,
                ..
            } => self.status(words::node_tail(node_id, *node_index, lines, &style)),
            _ => {}
        }
    }

    /// An array's counts: the spinner's line on a terminal (rewritten in place), else a line
    /// (the library sends them only when they change).
    fn array_progress(&mut self, line: String) {
        if self.options.quiet {
            return;
        }
        match &self.bar {
            Some(bar) if self.options.style.live => bar.set_message(line),
            _ => self.status(line),
        }
    }

    /// A progress bar on a terminal, a line otherwise.
    fn upload_started(&mut self, url: &str, bytes: u64) {
        if self.options.style.live && !self.options.quiet {
            let bar = ProgressBar::new(bytes).with_style(
                ProgressStyle::with_template(
                    "Uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        } else {
            self.status(format!(
                "Uploading package to {url} ({})",
                human_bytes(bytes)
            ));
        }
    }

    fn write_log_line(&mut self, job_name: &str, timestamp_ms: i64, message: &str) {
        if self.options.prefix_jobs {
            self.pending.extend_from_slice(job_name.as_bytes());
            self.pending.extend_from_slice(b" | ");
        }
        if self.options.timestamps {
            self.pending
                .extend_from_slice(format_timestamp(timestamp_ms).as_bytes());
            self.pending.push(b' ');
        }
        self.pending.extend_from_slice(message.as_bytes());
        if !message.ends_with('\n') {
            self.pending.push(b'\n');
        }
    }
}

/// `1.2 MiB`, `830 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3m 05s`, `42s`, `1h 02m`, `850ms`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// An RFC 3339 UTC timestamp from epoch milliseconds.
pub fn format_timestamp(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}
