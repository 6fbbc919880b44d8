//! Metaflow's local metadata (`metaflow/plugins/metadata_providers/local.py`): a `.metaflow`
//! tree of `_meta/_self.json` objects and one `sysmeta_<field>_<ms>.json` file per metadatum.
//! Every file is written once, atomically (a temp file linked into place, never over another),
//! and ids are taken by creating their directory, so processes sharing a run never collide.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::model::{now_ms, Op, TaskRecord};
use super::MetadataError;
use crate::settings::{Key, Origin, Settings};

/// The `.metaflow` directory Metaflow would use: `$METAFLOW_DATASTORE_SYSROOT_LOCAL/.metaflow`
/// when set, else the nearest `.metaflow` at or above `cwd`, else `cwd/.metaflow`.
pub fn metaflow_root(settings: &Settings, cwd: &Path) -> PathBuf {
    if let Some(r) = settings
        .resolved(Key::DatastoreSysrootLocal)
        .filter(|r| r.origin != Origin::Default)
    {
        return Path::new(&r.value).join(".metaflow");
    }
    cwd.ancestors()
        .map(|d| d.join(".metaflow"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| cwd.join(".metaflow"))
}

/// Writes records into one `.metaflow` tree.
#[derive(Debug, Clone)]
pub struct LocalWriter {
    pub root: PathBuf,
}

impl LocalWriter {
    /// Records one op; assigns the run and task ids when it creates them.
    pub fn apply(&self, record: &mut TaskRecord, op: &Op) -> Result<(), MetadataError> {
        let flow_dir = self.root.join(&record.flow);
        match op {
            Op::Flow => write_once(&meta(&flow_dir).join("_self.json"), &record.flow_body()),
            Op::Run => {
                let run = match &record.run_id {
                    Some(run) => run.clone(),
                    // Metaflow's local run ids: microseconds since the epoch.
                    None => claim(&flow_dir, now_ms() * 1000)?,
                };
                record.run_id = Some(run.clone());
                let mut body = record.run_body(true);
                body["run_number"] = run.clone().into();
                write_once(&meta(&flow_dir.join(&run)).join("_self.json"), &body)
            }
            Op::Step => {
                let run = record.run_id.clone().unwrap_or_default();
                let dir = flow_dir.join(&run).join(&record.step);
                write_once(&meta(&dir).join("_self.json"), &record.step_body(&run))
            }
            Op::Task => {
                let run = record.run_id.clone().unwrap_or_default();
                let step_dir = flow_dir.join(&run).join(&record.step);
                let task = match &record.task_id {
                    Some(task) => task.clone(),
                    None => {
                        let taken = std::fs::read_dir(&step_dir).map_or(0, |d| d.count());
                        claim(&step_dir, taken as i64)?
                    }
                };
                record.task_id = Some(task.clone());
                let body = record.task_body(&run, Some(&task));
                write_once(&meta(&step_dir.join(&task)).join("_self.json"), &body)
            }
            Op::Metadata { data } => {
                let run = record.run_id.clone().unwrap_or_default();
                let task = record.task_id.clone().unwrap_or_default();
                let dir = meta(&flow_dir.join(&run).join(&record.step).join(&task));
                for datum in data {
                    let body = record.datum_body(&run, &task, datum);
                    // Two data of one field in one millisecond: the later takes the next one.
                    let mut ts = datum.ts_epoch;
                    loop {
                        let path = dir.join(format!("sysmeta_{}_{ts}.json", datum.field));
                        match write_once(&path, &body) {
                            Err(MetadataError::Io { source, .. })
                                if source.kind() == std::io::ErrorKind::AlreadyExists =>
                            {
                                ts += 1
                            }
                            other => break other?,
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn meta(dir: &Path) -> PathBuf {
    dir.join("_meta")
}

/// Takes the first free id from `start` up by creating its directory.
fn claim(parent: &Path, start: i64) -> Result<String, MetadataError> {
    let io = |source| MetadataError::Io {
        path: parent.to_owned(),
        source,
    };
    std::fs::create_dir_all(parent).map_err(io)?;
    let mut id = start;
    loop {
        match std::fs::create_dir(parent.join(id.to_string())) {
            Ok(()) => return Ok(id.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => id += 1,
            Err(e) => return Err(io(e)),
        }
    }
}

/// Writes `value` to `path` unless it exists: a temp file, then a hard link, which fails
/// rather than replace. An existing `_self.json` is the object already created: not an error.
fn write_once(path: &Path, value: &Value) -> Result<(), MetadataError> {
    let io = |source| MetadataError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(value.to_string().as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    match std::fs::hard_link(tmp.path(), path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.ends_with("_self.json") => {
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

/// Reads `_meta/_self.json` objects and metadata back (for `logs FLOW/RUN`).
pub fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The sub-directories of `dir` that are objects (everything but `_meta`), sorted.
pub fn children(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("_meta").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Every metadatum of a task directory, as stored.
pub fn task_metadata(task_dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(task_dir.join("_meta"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sysmeta_"))
        })
        .collect();
    files.sort();
    files.iter().filter_map(|p| read_json(p)).collect()
}
