//! `mfbatch configure`: writes Metaflow's own config file (`$METAFLOW_HOME/config[_<profile>].json`)
//! from a stack's outputs (`--from-stack`), from Metaflow's questions (`aws`), or from a file
//! (`import`); and shows, exports or deletes it. Nothing is overwritten without a yes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::configure::{self, ConfigMap, ConfigureError, AWS_QUESTIONS};
use mfbatch::settings;
use mfbatch::stack;

use super::args::Output;
use super::exit;
use super::failure::Failure;
use super::prompt;
use super::Global;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConfigureArgs {
    #[command(subcommand)]
    command: Option<ConfigureCommand>,
    /// Write the settings a CloudFormation stack's outputs fill (DescribeStacks).
    #[arg(long, value_name = "STACK")]
    from_stack: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct Common {
    /// The profile to write (config_<PROFILE>.json); default: config.json.
    #[arg(long, short, value_name = "PROFILE")]
    profile: Option<String>,
    /// Overwrite or delete without asking.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Subcommand)]
enum ConfigureCommand {
    /// Metaflow's questions (S3 datastore, metadata service, Batch); flags answer them for scripts.
    Aws(Box<AwsArgs>),
    /// Print the profile's settings (secrets hidden).
    Show(ProfileArgs),
    /// Copy the profile to FILE.
    Export {
        file: PathBuf,
        #[command(flatten)]
        common: ProfileArgs,
    },
    /// Replace the profile with FILE (a JSON object of METAFLOW_* keys).
    Import {
        file: PathBuf,
        #[command(flatten)]
        common: ProfileArgs,
    },
    /// Delete the profile's file.
    Reset(ProfileArgs),
}

/// Like [`Common`], but the profile defaults to `$METAFLOW_PROFILE`, as in `metaflow configure`.
#[derive(Debug, Args)]
struct ProfileArgs {
    /// The profile (default: $METAFLOW_PROFILE, else config.json).
    #[arg(long, short, value_name = "PROFILE")]
    profile: Option<String>,
    /// Overwrite or delete without asking.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Args)]
struct AwsArgs {
    #[command(flatten)]
    common: Common,
    /// S3 folder for Metaflow's datastore (s3://bucket/prefix).
    #[arg(long, value_name = "S3URL")]
    datastore_root: Option<String>,
    /// S3 folder for Metaflow's datatools (default: <datastore root>/data).
    #[arg(long, value_name = "S3URL")]
    datatools_root: Option<String>,
    /// Metadata service URL ("" for none).
    #[arg(long, value_name = "URL")]
    service_url: Option<String>,
    /// Metadata service URL as jobs see it (default: --service-url).
    #[arg(long, value_name = "URL")]
    service_internal_url: Option<String>,
    /// Metadata service auth key.
    #[arg(long, value_name = "KEY")]
    service_auth_key: Option<String>,
    /// AWS Batch job queue.
    #[arg(long, value_name = "QUEUE")]
    queue: Option<String>,
    /// IAM role for jobs.
    #[arg(long, value_name = "ARN")]
    iam_role: Option<String>,
    /// Registry for images that name none.
    #[arg(long, value_name = "REGISTRY")]
    container_registry: Option<String>,
    /// Default container image.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// ECS execution role, for Fargate queues.
    #[arg(long, value_name = "ARN")]
    execution_role: Option<String>,
}

impl AwsArgs {
    fn flag(&self, key: &str) -> Option<&String> {
        match key {
            "METAFLOW_DATASTORE_SYSROOT_S3" => self.datastore_root.as_ref(),
            "METAFLOW_DATATOOLS_S3ROOT" => self.datatools_root.as_ref(),
            "METAFLOW_SERVICE_URL" => self.service_url.as_ref(),
            "METAFLOW_SERVICE_INTERNAL_URL" => self.service_internal_url.as_ref(),
            "METAFLOW_SERVICE_AUTH_KEY" => self.service_auth_key.as_ref(),
            "METAFLOW_BATCH_JOB_QUEUE" => self.queue.as_ref(),
            "METAFLOW_ECS_S3_ACCESS_IAM_ROLE" => self.iam_role.as_ref(),
            "METAFLOW_BATCH_CONTAINER_REGISTRY" => self.container_registry.as_ref(),
            "METAFLOW_BATCH_CONTAINER_IMAGE" => self.image.as_ref(),
            "METAFLOW_ECS_FARGATE_EXECUTION_ROLE" => self.execution_role.as_ref(),
            _ => None,
        }
    }
}

impl From<ConfigureError> for Failure {
    fn from(e: ConfigureError) -> Self {
        let code = match e {
            ConfigureError::Io { .. } => exit::FAILURE,
            _ => exit::USAGE,
        };
        Failure::new(e, None, code)
    }
}

pub async fn run(args: ConfigureArgs, global: Global) -> Result<u8, Failure> {
    let env = settings::utf8_environment(std::env::vars_os());
    // `show`, `export`, `import` and `reset` default to $METAFLOW_PROFILE, the writers to the
    // default profile: as `metaflow configure` does.
    let current_profile =
        |given: Option<String>| given.or_else(|| env.get("METAFLOW_PROFILE").cloned());
    match (args.command, args.from_stack) {
        (None, Some(stack_name)) => {
            let path = configure::profile_path(&env, args.common.profile.as_deref())?;
            from_stack(&stack_name, &path, args.common.yes, global).await
        }
        (None, None) => Err(Failure::usage_message(
            "configure needs --from-stack STACK or a subcommand (aws, show, export, import, reset)",
            Some("`mfbatch configure --help` lists them".into()),
        )),
        (Some(ConfigureCommand::Aws(aws)), _) => {
            let path = configure::profile_path(&env, aws.common.profile.as_deref())?;
            ask_aws(&aws, &path, global)
        }
        (Some(ConfigureCommand::Show(p)), _) => {
            let path = configure::profile_path(&env, current_profile(p.profile).as_deref())?;
            show(&path, global)
        }
        (Some(ConfigureCommand::Export { file, common }), _) => {
            let path = configure::profile_path(&env, current_profile(common.profile).as_deref())?;
            let map = read_existing(&path)?;
            if file.exists()
                && !prompt::confirm(
                    &format!("{} exists. Overwrite it?", file.display()),
                    common.yes,
                )?
            {
                return declined();
            }
            configure::write(&file, &map)?;
            eprintln!("Configuration exported to {}", file.display());
            Ok(exit::SUCCESS)
        }
        (Some(ConfigureCommand::Import { file, common }), _) => {
            let path = configure::profile_path(&env, current_profile(common.profile).as_deref())?;
            let map = configure::read(&file)?.ok_or_else(|| {
                Failure::usage_message(&format!("{} does not exist", file.display()), None)
            })?;
            write_confirmed(&path, &map, common.yes)
        }
        (Some(ConfigureCommand::Reset(p)), _) => {
            let path = configure::profile_path(&env, current_profile(p.profile).as_deref())?;
            if !path.exists() {
                eprintln!("No configuration at {}: nothing to reset.", path.display());
                return Ok(exit::SUCCESS);
            }
            if !prompt::confirm(&format!("Delete {}?", path.display()), p.yes)? {
                return declined();
            }
            configure::remove(&path)?;
            eprintln!("Deleted {}", path.display());
            Ok(exit::SUCCESS)
        }
    }
}

fn declined() -> Result<u8, Failure> {
    eprintln!("Nothing was changed.");
    Ok(exit::FAILURE)
}

fn read_existing(path: &Path) -> Result<ConfigMap, Failure> {
    configure::read(path)?.ok_or_else(|| {
        Failure::usage_message(
            &format!("no configuration at {}", path.display()),
            Some(
                "write one with `mfbatch configure --from-stack STACK` or `mfbatch configure aws`"
                    .into(),
            ),
        )
    })
}

/// Writes `map` to `path`, asking first when that replaces a file with other content.
fn write_confirmed(path: &Path, map: &ConfigMap, yes: bool) -> Result<u8, Failure> {
    if let Some(existing) = configure::read(path)? {
        if configure::render(&existing) == configure::render(map) {
            eprintln!("{} already holds this configuration.", path.display());
            return Ok(exit::SUCCESS);
        }
        if !prompt::confirm(&format!("{} exists. Overwrite it?", path.display()), yes)? {
            return declined();
        }
    }
    configure::write(path, map)?;
    eprintln!("Configuration written to {}", path.display());
    Ok(exit::SUCCESS)
}

/// `KEY=value` lines on stdout (secrets hidden), or the object as JSON.
fn print_map(map: &ConfigMap, output: Output) {
    let shown: BTreeMap<&String, String> = map
        .iter()
        .map(|(k, v)| (k, settings::redact(k, &configure::display_value(v))))
        .collect();
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string(&shown).expect("serializes")
            );
        }
        Output::Text => {
            for (k, v) in shown {
                let _ = writeln!(out, "{k}={v}");
            }
        }
    }
    let _ = out.flush();
}

fn show(path: &Path, global: Global) -> Result<u8, Failure> {
    let map = read_existing(path)?;
    if !global.quiet && global.output == Output::Text {
        eprintln!("Configuration in {}:", path.display());
    }
    print_map(&map, global.output);
    Ok(exit::SUCCESS)
}

async fn from_stack(name: &str, path: &Path, yes: bool, global: Global) -> Result<u8, Failure> {
    let clients = Clients::from_environment(&ClientOptions::default()).await?;
    let info = stack::require(&clients, name).await?;
    let values = stack::settings_of(&info)?;
    let existing = configure::read(path)?.unwrap_or_default();
    let map = configure::merged(&existing, &values);
    if !global.quiet && global.output == Output::Text {
        eprintln!(
            "Settings from stack {name} ({}), for {}:",
            info.status,
            path.display()
        );
    }
    let new: ConfigMap = values
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    print_map(&new, global.output);
    write_confirmed(path, &map, yes)
}

/// Metaflow's questions in Metaflow's order, the current value (or a derived one) as the default;
/// flags answer without asking. Without a terminal, a required value with no flag and no current
/// value is a usage error naming the flag.
fn ask_aws(args: &AwsArgs, path: &Path, global: Global) -> Result<u8, Failure> {
    let existing = configure::read(path)?.unwrap_or_default();
    let interactive = prompt::interactive();
    let mut answers: BTreeMap<String, String> = BTreeMap::new();
    for question in AWS_QUESTIONS {
        if !question.applies(&answers) {
            answers.insert(question.key.into(), String::new());
            continue;
        }
        let current = existing
            .get(question.key)
            .map(configure::display_value)
            .or_else(|| question.derived_default(&answers));
        let answer = match args.flag(question.key) {
            Some(value) => value.clone(),
            None if interactive => {
                let secret = settings::is_secret(question.key);
                prompt::ask(question.prompt, current.as_deref(), secret).ok_or_else(|| {
                    Failure::usage_message("stdin closed before every question was answered", None)
                })?
            }
            None => current.unwrap_or_default(),
        };
        if question.required && answer.trim().is_empty() {
            return Err(Failure::usage_message(
                &format!("{} is required: pass {}", question.key, question.flag),
                (!interactive).then(|| "stdin is not a terminal, so mfbatch cannot ask".into()),
            ));
        }
        answers.insert(question.key.into(), answer.trim().to_owned());
    }
    answers.extend(configure::aws_modes(&answers));
    let map = configure::merged(&existing, &answers);
    if !global.quiet && global.output == Output::Text {
        eprintln!("Settings for {}:", path.display());
    }
    print_map(&map, global.output);
    write_confirmed(path, &map, args.common.yes)
}
