//! What goes into SubmitJob only, never into the job definition: an array of children, a
//! multi-node job, dependencies, a scheduling priority and a fair-share identifier. Checked here,
//! before any AWS call; `--share` against the queue's scheduling policy in `launch::plan`.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::settings::{BatchKey, Key, Settings};
use crate::spec::invalid;

/// AWS Batch's limits.
pub const MAX_ARRAY_SIZE: u32 = 10_000;
pub const MAX_DEPENDENCIES: usize = 20;
pub const MAX_NODES: u32 = 1000;
pub const MAX_PRIORITY: u32 = 9999;
/// An `--array-args` file is read whole and uploaded; a bigger one is a mistake.
pub const MAX_ARRAY_ARGS_BYTES: usize = 64 * 1024 * 1024;

/// The SubmitJob-only options, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scheduling {
    pub array: Option<ArraySpec>,
    /// `--nodes N`: a multi-node parallel job of N nodes (EC2 only).
    pub nodes: Option<u32>,
    pub depends_on: Vec<Dependency>,
    pub priority: Option<u32>,
    pub share: Option<String>,
}

/// `--array N` with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArraySpec {
    /// 1 to 10,000; 1 is submitted as a plain job (Batch refuses arrays of 1).
    pub size: u32,
    /// `--array-sequential`: children run one by one, from index 0.
    pub sequential: bool,
    pub args: Option<ArrayArgs>,
}

/// `--array-args FILE`: child i gets line i as its arguments (split like a POSIX shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayArgs {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub lines: usize,
}

/// `--depends-on JOB_ID[:N_TO_N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub job_id: String,
    /// Child i waits for child i of the dependency (both arrays of the same size).
    pub n_to_n: bool,
}

/// The options of `run` that make up [`Scheduling`], as typed.
#[derive(Debug, Clone, Default)]
pub struct ScheduleOptions {
    pub array: Option<String>,
    pub array_sequential: bool,
    pub array_args: Option<PathBuf>,
    pub nodes: Option<String>,
    pub depends_on: Vec<String>,
}

impl Scheduling {
    pub fn build(settings: &Settings, options: &ScheduleOptions) -> Result<Self, ConfigError> {
        let array = array(options)?;
        let nodes = match &options.nodes {
            Some(text) => Some(
                text.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_NODES).contains(n))
                    .ok_or_else(|| invalid("--nodes", text, "expected 1 to 1000 nodes"))?,
            ),
            None => None,
        };
        if nodes.is_some() && array.is_some() {
            return Err(invalid(
                "--nodes",
                options.nodes.as_deref().unwrap_or_default(),
                "a job is an array or a multi-node job, not both (leave out --array)",
            ));
        }
        let depends_on = options
            .depends_on
            .iter()
            .map(|d| dependency(d, array.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        if depends_on.len() + usize::from(array.as_ref().is_some_and(|a| a.sequential))
            > MAX_DEPENDENCIES
        {
            return Err(invalid(
                "--depends-on",
                &depends_on.len().to_string(),
                "AWS Batch takes at most 20 dependencies",
            ));
        }
        Ok(Scheduling {
            array,
            nodes,
            depends_on,
            priority: priority(settings)?,
            share: share(settings)?,
        })
    }

    /// The array's size when it is really an array (2 or more children).
    pub fn array_size(&self) -> Option<u32> {
        self.array.as_ref().map(|a| a.size).filter(|n| *n > 1)
    }
}

fn array(options: &ScheduleOptions) -> Result<Option<ArraySpec>, ConfigError> {
    let Some(text) = &options.array else {
        if options.array_sequential {
            return Err(invalid("--array-sequential", "on", "needs --array N"));
        }
        if let Some(path) = &options.array_args {
            return Err(invalid(
                "--array-args",
                &path.display().to_string(),
                "needs --array N",
            ));
        }
        return Ok(None);
    };
    let size = text
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_ARRAY_SIZE).contains(n))
        .ok_or_else(|| invalid("--array", text, "expected 1 to 10000 children"))?;
    let args = match &options.array_args {
        Some(path) => Some(read_array_args(path, size)?),
        None => None,
    };
    Ok(Some(ArraySpec {
        size,
        sequential: options.array_sequential,
        args,
    }))
}

/// Reads `--array-args`: one line per child, each a valid shell-like argument list.
fn read_array_args(path: &Path, size: u32) -> Result<ArrayArgs, ConfigError> {
    let shown = path.display().to_string();
    let bad = |reason: String| invalid("--array-args", &shown, &reason);
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if bytes.len() > MAX_ARRAY_ARGS_BYTES {
        return Err(bad("larger than 64 MiB".into()));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != size as usize {
        return Err(bad(format!(
            "has {} lines for --array {size}: give one line of arguments per child",
            lines.len()
        )));
    }
    if let Some((n, _)) = lines.iter().enumerate().find(|(_, l)| !quotes_balanced(l)) {
        return Err(bad(format!(
            "line {} has an unclosed quote or a trailing backslash",
            n + 1
        )));
    }
    Ok(ArrayArgs {
        path: path.to_owned(),
        lines: lines.len(),
        bytes,
    })
}

/// Whether `shlex.split` (what the bootstrap uses) accepts the line: quotes closed, no
/// trailing escape.
pub fn quotes_balanced(line: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') if chars.next().is_none() => return false,
            (_, '\\') => {}
            (Some('"'), '"') => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            _ => {}
        }
    }
    quote.is_none()
}

fn dependency(text: &str, is_array: bool) -> Result<Dependency, ConfigError> {
    let (job_id, n_to_n) = match text.strip_suffix(":N_TO_N") {
        Some(id) => (id, true),
        None => (text, false),
    };
    let id_ok = !job_id.is_empty()
        && job_id.len() <= 128
        && job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_:#".contains(c));
    if !id_ok {
        return Err(invalid(
            "--depends-on",
            text,
            "expected JOB_ID or JOB_ID:N_TO_N",
        ));
    }
    if n_to_n && !is_array {
        return Err(invalid(
            "--depends-on",
            text,
            "N_TO_N pairs the children of two arrays: it needs --array",
        ));
    }
    Ok(Dependency {
        job_id: job_id.to_owned(),
        n_to_n,
    })
}

fn priority(settings: &Settings) -> Result<Option<u32>, ConfigError> {
    let Some(r) = settings.resolved(Key::Batch(BatchKey::Priority)) else {
        return Ok(None);
    };
    r.value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p <= MAX_PRIORITY)
        .map(Some)
        .ok_or_else(|| {
            crate::spec::container::blame(
                BatchKey::Priority,
                r,
                "expected a scheduling priority from 0 to 9999",
            )
        })
}

fn share(settings: &Settings) -> Result<Option<String>, ConfigError> {
    let Some(r) = settings.resolved(Key::Batch(BatchKey::Share)) else {
        return Ok(None);
    };
    let share = r.value.trim();
    let ok = !share.is_empty()
        && share.len() <= 255
        && share.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(crate::spec::container::blame(
            BatchKey::Share,
            r,
            "a share identifier is 1-255 letters, digits and '_'",
        ));
    }
    Ok(Some(share.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(options: ScheduleOptions) -> Result<Scheduling, ConfigError> {
        Scheduling::build(&Settings::default(), &options)
    }

    #[test]
    fn arrays_nodes_and_dependencies() {
        let s = build(ScheduleOptions {
            array: Some("10".into()),
            array_sequential: true,
            depends_on: vec!["a1:N_TO_N".into(), "b2".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.array_size(), Some(10));
        assert!(s.depends_on[0].n_to_n && !s.depends_on[1].n_to_n);
        for bad in [
            ScheduleOptions {
                array: Some("10001".into()),
                ..Default::default()
            },
            ScheduleOptions {
                array: Some("0".into()),
                ..Default::default()
            },
            ScheduleOptions {
                array_sequential: true,
                ..Default::default()
            },
            ScheduleOptions {
                depends_on: vec!["x:N_TO_N".into()],
                ..Default::default()
            },
            ScheduleOptions {
                array: Some("2".into()),
                nodes: Some("2".into()),
                ..Default::default()
            },
            ScheduleOptions {
                depends_on: (0..21).map(|i| format!("j{i}")).collect(),
                ..Default::default()
            },
            ScheduleOptions {
                depends_on: vec!["bad id".into()],
                ..Default::default()
            },
        ] {
            assert!(build(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shell_quotes() {
        assert!(quotes_balanced(r#"a "b c" 'd e' f\ g"#));
        assert!(!quotes_balanced(r#"a "b"#));
        assert!(!quotes_balanced("a\\"));
        assert!(
            quotes_balanced(r#"'it\'"#),
            "no escapes inside single quotes"
        );
    }
}
