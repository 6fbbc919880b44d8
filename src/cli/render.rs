//! Turns library events into what the user sees: the job's log lines on stdout, status and
//! progress on stderr (live bars only on a terminal), or one JSON event per line with `--output json`.

use std::io::{self, BufWriter, Stdout, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use mfbatch::event::{Event, EventSink, Warning};
use mfbatch::package::SkipReason;
use tokio::sync::mpsc;

use super::args::Output;
use super::style::Style;

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
    stdout: BufWriter<Stdout>,
    bar: Option<ProgressBar>,
}

impl Writer {
    fn new(options: RenderOptions) -> Self {
        Writer {
            options,
            stdout: BufWriter::with_capacity(1 << 16, io::stdout()),
            bar: None,
        }
    }

    fn flush(&mut self) {
        let _ = self.stdout.flush();
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
            if let Ok(line) = serde_json::to_string(event) {
                let _ = writeln!(self.stdout, "{line}");
            }
            return;
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
                let _ = self.write_log_line(job_name, *timestamp_ms, message);
            }
            Event::Packaged {
                files,
                bytes,
                sha256,
            } => self.status(format!(
                "Packaged {files} file{} ({}), sha256 {}",
                if *files == 1 { "" } else { "s" },
                human_bytes(*bytes),
                &sha256[..12.min(sha256.len())]
            )),
            Event::Warning(warning) => {
                let text = match warning {
                    Warning::Skipped(s) => match s.reason {
                        SkipReason::LinkOutsideRoot => {
                            format!("skipped {}: the link points outside the package root", s.path)
                        }
                        SkipReason::BrokenLink => format!("skipped {}: the link is broken or loops", s.path),
                    },
                    Warning::Notice { message } => {
                        self.status(message.clone());
                        return;
                    }
                    Warning::LogsUnavailable { job_id, reason } => {
                        format!("cannot read the logs of job {job_id}: {reason}")
                    }
                    Warning::LargePackage { bytes } => format!(
                        "the package is {}; every job start downloads it (use --root or --package-suffixes to trim it)",
                        human_bytes(*bytes)
                    ),
                    Warning::StuckRunnable {
                        job_id,
                        seconds,
                        reason,
                        detail,
                    } => {
                        let mut text = format!(
                            "job {job_id} has been RUNNABLE for {}: no compute environment has placed it yet",
                            human_duration(Duration::from_secs(*seconds))
                        );
                        if let Some(reason) = reason {
                            text.push_str(&format!("\n  Batch says: {reason}"));
                        }
                        if let Some(detail) = detail {
                            text.push_str(&format!("\n  {detail}"));
                        }
                        text
                    }
                };
                self.status(format!("{} {text}", style.warning("warning:")));
            }
            Event::UploadStarted { url, bytes } => {
                if self.options.style.live && !self.options.quiet {
                    let bar = ProgressBar::new(*bytes).with_style(
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
                        human_bytes(*bytes)
                    ));
                }
            }
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
            Event::UploadSkipped { url } => self.status(format!("Package already stored at {url}")),
            Event::JobDefinition {
                name,
                arn,
                registered,
            } => {
                let revision = arn.rsplit(':').next().unwrap_or("?");
                let verb = if *registered { "Registered" } else { "Reusing" };
                self.status(format!("{verb} job definition {name}:{revision}"));
            }
            Event::Submitted {
                job_id,
                job_name,
                queue,
            } => self.status(format!("Submitted {job_name} ({job_id}) to {queue}")),
            Event::Status {
                job_name,
                status,
                previous,
                previous_ms,
                reason,
                ..
            } => {
                let mut line = format!("{job_name}: {status}");
                if let (Some(previous), Some(ms)) = (previous, previous_ms) {
                    line.push_str(&style.dim(&format!(
                        " (after {} in {previous})",
                        human_duration(Duration::from_millis(*ms))
                    )));
                }
                if let Some(reason) = reason {
                    line.push_str(&format!(" — {reason}"));
                }
                self.status(line);
            }
            Event::Terminating { job_id, reason } => {
                self.status(format!("Stopping job {job_id} ({reason})"));
            }
            Event::Exited(outcome) => {
                let line = if outcome.succeeded() {
                    format!("Job {} succeeded", outcome.job_id)
                } else {
                    let summary = outcome.summary.as_deref().unwrap_or("failed");
                    let mut text = format!(
                        "{} job {} failed: {summary}",
                        style.error("error:"),
                        outcome.job_id
                    );
                    if let Some(reason) = &outcome.reason {
                        text.push_str(&format!("\n  Batch says: {reason}"));
                    }
                    text
                };
                self.status(line);
            }
        }
    }

    fn write_log_line(
        &mut self,
        job_name: &str,
        timestamp_ms: i64,
        message: &str,
    ) -> io::Result<()> {
        if self.options.prefix_jobs {
            write!(self.stdout, "{job_name} | ")?;
        }
        if self.options.timestamps {
            write!(self.stdout, "{} ", format_timestamp(timestamp_ms))?;
        }
        self.stdout.write_all(message.as_bytes())?;
        if !message.ends_with('\n') {
            self.stdout.write_all(b"\n")?;
        }
        Ok(())
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
