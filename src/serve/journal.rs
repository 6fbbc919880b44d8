//! The daemon's journal: an append-only file of JSON lines, synced to disk before the SubmitJob
//! it announces, so that after a crash every key that may have a job is known with the name and
//! request id to find it by.
//!
//! Records: `intent` (key, request id, job name, queue, params hash, time: written before any
//! AWS write of the launch), `submitted` (key, job id), `failed` (key: no job exists, the key
//! may be launched again), `exited` (key, status, exit code). A torn last line (a crash mid-write)
//! is ignored. The file is rewritten compacted at open, under an exclusive lock that a second
//! daemon on the same directory cannot take.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ServeError;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    Intent {
        key: String,
        request_id: String,
        job_name: String,
        queue: String,
        params_hash: String,
        /// Epoch ms: a job found later must have been created after this (less clock skew).
        t: i64,
    },
    Submitted {
        key: String,
        job_id: String,
    },
    Failed {
        key: String,
        error: String,
    },
    Exited {
        key: String,
        status: String,
        exit_code: Option<i32>,
    },
}

/// What the journal knows of one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRecord {
    pub key: String,
    pub request_id: String,
    pub job_name: String,
    pub queue: String,
    pub params_hash: String,
    pub t: i64,
    pub job_id: Option<String>,
    /// `SUCCEEDED` / `FAILED`, once a follower saw the end.
    pub status: Option<String>,
    pub exit_code: Option<i32>,
}

/// The open journal (holding its lock).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    _lock: File,
    keys: BTreeMap<String, KeyRecord>,
}

impl Journal {
    /// Opens (or creates) `dir/journal.jsonl`, locked for this process, and compacts it.
    pub fn open(dir: &Path) -> Result<Self, ServeError> {
        let io = |e| ServeError::Journal {
            path: dir.to_owned(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = File::create(dir.join("lock")).map_err(io)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(ServeError::Locked {
                dir: dir.to_owned(),
            });
        }
        let path = dir.join("journal.jsonl");
        let mut keys = BTreeMap::new();
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).split(b'\n').map_while(Result::ok) {
                // A torn or foreign line is skipped: only whole records count.
                if let Ok(record) = serde_json::from_slice::<Record>(&line) {
                    apply(&mut keys, record);
                }
            }
        }
        let tmp = dir.join("journal.jsonl.tmp");
        let mut out = File::create(&tmp).map_err(io)?;
        for record in keys.values().flat_map(records_of) {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&record).expect("serializes")
            )
            .map_err(io)?;
        }
        out.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok(Journal {
            path,
            file,
            _lock: lock,
            keys,
        })
    }

    /// Appends a record and syncs it to disk before returning.
    pub fn append(&mut self, record: Record) -> Result<(), ServeError> {
        let mut line = serde_json::to_vec(&record).expect("serializes");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| ServeError::Journal {
                path: self.path.clone(),
                source,
            })?;
        apply(&mut self.keys, record);
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&KeyRecord> {
        self.keys.get(key)
    }

    /// Every key with a launch that may have made a job.
    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// The key of a job id, when the journal knows it.
    pub fn key_of(&self, job_id: &str) -> Option<&str> {
        self.keys
            .values()
            .find(|k| k.job_id.as_deref() == Some(job_id))
            .map(|k| k.key.as_str())
    }
}

fn apply(keys: &mut BTreeMap<String, KeyRecord>, record: Record) {
    match record {
        Record::Intent {
            key,
            request_id,
            job_name,
            queue,
            params_hash,
            t,
        } => {
            keys.insert(
                key.clone(),
                KeyRecord {
                    key,
                    request_id,
                    job_name,
                    queue,
                    params_hash,
                    t,
                    job_id: None,
                    status: None,
                    exit_code: None,
                },
            );
        }
        Record::Submitted { key, job_id } => {
            if let Some(k) = keys.get_mut(&key) {
                k.job_id = Some(job_id);
            }
        }
        Record::Failed { key, .. } => {
            keys.remove(&key);
        }
        Record::Exited {
            key,
            status,
            exit_code,
        } => {
            if let Some(k) = keys.get_mut(&key) {
                k.status = Some(status);
                k.exit_code = exit_code;
            }
        }
    }
}

/// The records that rebuild one key's state.
fn records_of(k: &KeyRecord) -> Vec<Record> {
    let mut out = vec![Record::Intent {
        key: k.key.clone(),
        request_id: k.request_id.clone(),
        job_name: k.job_name.clone(),
        queue: k.queue.clone(),
        params_hash: k.params_hash.clone(),
        t: k.t,
    }];
    if let Some(job_id) = &k.job_id {
        out.push(Record::Submitted {
            key: k.key.clone(),
            job_id: job_id.clone(),
        });
    }
    if let Some(status) = &k.status {
        out.push(Record::Exited {
            key: k.key.clone(),
            status: status.clone(),
            exit_code: k.exit_code,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(key: &str) -> Record {
        Record::Intent {
            key: key.into(),
            request_id: "r".into(),
            job_name: "n".into(),
            queue: "q".into(),
            params_hash: "h".into(),
            t: 1,
        }
    }

    #[test]
    fn survives_a_torn_line_and_a_second_daemon_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut journal = Journal::open(dir.path()).unwrap();
            assert!(matches!(
                Journal::open(dir.path()),
                Err(ServeError::Locked { .. })
            ));
            journal.append(intent("a")).unwrap();
            journal
                .append(Record::Submitted {
                    key: "a".into(),
                    job_id: "j1".into(),
                })
                .unwrap();
            journal.append(intent("b")).unwrap();
            journal
                .append(Record::Failed {
                    key: "b".into(),
                    error: "x".into(),
                })
                .unwrap();
        }
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .unwrap();
        file.write_all(br#"{"op":"intent","key":"c","req"#).unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let keys: Vec<_> = journal
            .keys()
            .map(|k| (k.key.clone(), k.job_id.clone()))
            .collect();
        assert_eq!(keys, vec![("a".to_owned(), Some("j1".to_owned()))]);
        assert_eq!(journal.key_of("j1"), Some("a"));
    }
}
