//! `mfbatch stack template|deploy|status|delete`: the CloudFormation stack, with its events shown
//! as they happen (one live line per resource on a terminal, a plain line per event otherwise).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::event::{Event, EventSink};
use mfbatch::stack::{self, PollOptions, StackError, StackEvent, StackInfo};

use super::args::Output;
use super::exit;
use super::failure::Failure;
use super::prompt;
use super::style::Style;
use super::Global;

#[derive(Debug, Subcommand)]
pub enum StackArgs {
    /// Print mfbatch's CloudFormation template (bucket, Batch compute environment and queue, roles).
    Template,
    /// Create the stack, or update it, showing CloudFormation's events; ends with its outputs.
    Deploy {
        /// Stack name.
        name: String,
        /// A template parameter (repeatable), e.g. --param MaxVCpus=128 --param ComputeType=SPOT.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Show a stack's status and outputs (any stack with Metaflow's outputs).
    Status {
        /// Stack name.
        name: String,
    },
    /// Delete the stack (asks first). The datastore bucket is kept, with its data.
    Delete {
        /// Stack name.
        name: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
}

impl From<StackError> for Failure {
    fn from(e: StackError) -> Self {
        let hint = e.hint();
        let code = if e.is_usage() {
            exit::USAGE
        } else {
            exit::FAILURE
        };
        Failure::new(e, hint, code)
    }
}

pub async fn run(args: StackArgs, global: Global) -> Result<u8, Failure> {
    match args {
        StackArgs::Template => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(stack::template::TEMPLATE.as_bytes());
            let _ = out.flush();
            Ok(exit::SUCCESS)
        }
        StackArgs::Deploy { name, params } => deploy(&name, &params, global).await,
        StackArgs::Status { name } => {
            let clients = clients().await?;
            let info = stack::require(&clients, &name).await?;
            if global.output == Output::Json {
                print_json(&serde_json::to_value(&info).expect("serializes"));
            } else {
                println!("{}  {}", info.name, info.status);
                if let Some(reason) = &info.reason {
                    println!("  reason: {reason}");
                }
                print_outputs(&info);
            }
            Ok(exit::SUCCESS)
        }
        StackArgs::Delete { name, yes } => delete(&name, yes, global).await,
    }
}

async fn deploy(name: &str, params: &[String], global: Global) -> Result<u8, Failure> {
    // Checked before the first AWS call.
    let params = stack::parse_parameters(params).map_err(|e| {
        let hint = e.hint();
        Failure::new(e, hint, exit::USAGE)
    })?;
    let clients = clients().await?;
    let view = EventView::new(global);
    let result = stack::deploy(
        &clients,
        name,
        &params,
        PollOptions::default(),
        &view.sink(),
    )
    .await;
    view.finish();
    let deployed = result?;
    if global.output == Output::Json {
        print_json(
            &serde_json::json!({"event": "deployed", "change": deployed.change, "stack": deployed.stack}),
        );
        return Ok(exit::SUCCESS);
    }
    let verb = match deployed.change {
        stack::Change::Created => "created",
        stack::Change::Updated => "updated",
        stack::Change::Unchanged => "already up to date",
    };
    if !global.quiet {
        eprintln!("Stack {name} {verb} ({}).", deployed.stack.status);
    }
    print_outputs(&deployed.stack);
    if !global.quiet {
        eprintln!(
            "{}",
            global.style.dim(&format!(
                "Next: mfbatch configure --from-stack {name}, then mfbatch doctor"
            ))
        );
    }
    Ok(exit::SUCCESS)
}

async fn delete(name: &str, yes: bool, global: Global) -> Result<u8, Failure> {
    let clients = clients().await?;
    let info = stack::require(&clients, name).await?;
    let kept = info
        .bucket()
        .map(|b| format!("; the bucket {b} and its data are kept"))
        .unwrap_or_default();
    if !prompt::confirm(&format!("Delete stack {name}{kept}?"), yes)? {
        eprintln!("Nothing was deleted.");
        return Ok(exit::FAILURE);
    }
    let view = EventView::new(global);
    let result = stack::delete(&clients, name, PollOptions::default(), &view.sink()).await;
    view.finish();
    let deleted = result?;
    if global.output == Output::Json {
        print_json(
            &serde_json::json!({"event": "deleted", "stack": deleted.stack, "retained_bucket": deleted.retained_bucket}),
        );
        return Ok(exit::SUCCESS);
    }
    eprintln!("Stack {name} deleted.");
    if let Some(bucket) = deleted.retained_bucket {
        eprintln!(
            "The bucket {bucket} was kept, with its data (DeletionPolicy: Retain). Delete it yourself when you no longer need it: aws s3 rb s3://{bucket} --force"
        );
    }
    Ok(exit::SUCCESS)
}

async fn clients() -> Result<Clients, Failure> {
    Ok(Clients::from_environment(&ClientOptions::default()).await?)
}

fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// The outputs on stdout, `Key = value`, with the Metaflow setting each fills.
fn print_outputs(info: &StackInfo) {
    let fills: BTreeMap<&str, &str> = stack::outputs::OUTPUT_SETTINGS
        .iter()
        .map(|o| (o.output, o.key))
        .collect();
    let width = info.outputs.keys().map(String::len).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (key, value) in &info.outputs {
        let note = fills
            .get(key.as_str())
            .map(|k| format!("  ({k})"))
            .unwrap_or_default();
        let _ = writeln!(out, "{key:width$}  {value}{note}");
    }
    let _ = out.flush();
}

/// Shows stack events: JSON lines, a live line per resource on a terminal, or plain lines.
struct EventView {
    global: Global,
    live: Option<Live>,
}

struct Live {
    bars: MultiProgress,
    by_resource: Mutex<BTreeMap<String, ProgressBar>>,
}

impl EventView {
    fn new(global: Global) -> Arc<Self> {
        let live =
            (global.style.live && global.output == Output::Text && !global.quiet).then(|| Live {
                bars: MultiProgress::new(),
                by_resource: Mutex::new(BTreeMap::new()),
            });
        Arc::new(EventView { global, live })
    }

    fn sink(self: &Arc<Self>) -> EventSink {
        let view = self.clone();
        Arc::new(move |event| {
            if let Event::Stack(e) = event {
                view.show(&e);
            }
        })
    }

    fn show(&self, e: &StackEvent) {
        if self.global.output == Output::Json {
            print_json(&serde_json::to_value(Event::Stack(e.clone())).expect("serializes"));
            return;
        }
        if self.global.quiet {
            return;
        }
        let Some(live) = &self.live else {
            eprintln!("{}", line(e, &self.global.style));
            return;
        };
        let mut bars = live.by_resource.lock().expect("not poisoned");
        let bar = bars.entry(e.resource.clone()).or_insert_with(|| {
            let bar = live.bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        bar.set_message(line(e, &self.global.style));
        if !e.status.ends_with("_IN_PROGRESS") {
            bar.finish();
        }
    }

    fn finish(&self) {
        if let Some(live) = &self.live {
            for bar in live.by_resource.lock().expect("not poisoned").values() {
                if !bar.is_finished() {
                    bar.finish();
                }
            }
        }
    }
}

/// `CREATE_COMPLETE  JobQueue (AWS::Batch::JobQueue) — reason`.
fn line(e: &StackEvent, style: &Style) -> String {
    let status = if e.is_failure() {
        style.error(&e.status)
    } else {
        e.status.clone()
    };
    let mut text = format!("{status:<20}  {} ({})", e.resource, e.resource_type);
    if let Some(reason) = e.reason.as_deref().filter(|r| !r.is_empty()) {
        text.push_str(&format!(" — {reason}"));
    }
    text
}
