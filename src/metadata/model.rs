//! The records of one task, in the shapes Metaflow's client sends to the service and writes to
//! `.metaflow` (`metaflow/metadata_provider/metadata.py`): flow, run, step and task objects, and
//! task metadata tagged `attempt_id:N`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One task (one job) and the run, step and flow it belongs to. Run and task ids are assigned
/// when the run and task are created (by the service, or by the local writer), unless given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub flow: String,
    pub step: String,
    pub user: String,
    pub run_id: Option<String>,
    pub task_id: Option<String>,
    /// When the records were made (epoch ms), the objects' `ts_epoch`.
    pub ts_epoch: i64,
    pub tags: Vec<String>,
    pub system_tags: Vec<String>,
}

/// One thing to record, in the order Metaflow's client records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Get or create the flow.
    Flow,
    /// Create the run (or, with a given id, get or create it).
    Run,
    /// Get or create the step.
    Step,
    /// Create the task.
    Task,
    /// Task metadata.
    Metadata { data: Vec<Datum> },
}

/// One task metadatum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datum {
    pub field: String,
    pub value: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Metaflow's attempt: 0 for the first (Batch's attempt minus one).
    pub attempt: u32,
    pub ts_epoch: i64,
}

impl Datum {
    /// A datum whose type is its field name, as the `@batch` decorator records them.
    pub fn new(field: &str, value: impl Into<String>, attempt: u32) -> Datum {
        Datum::typed(field, field, value, attempt)
    }

    pub fn typed(field: &str, kind: &str, value: impl Into<String>, attempt: u32) -> Datum {
        Datum {
            field: field.to_owned(),
            value: value.into(),
            kind: kind.to_owned(),
            attempt,
            ts_epoch: now_ms(),
        }
    }
}

/// Now, in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl TaskRecord {
    /// `FLOW/RUN/STEP/TASK`, with `?` for ids not assigned yet.
    pub fn pathspec(&self) -> String {
        let unknown = "?".to_owned();
        format!(
            "{}/{}/{}/{}",
            self.flow,
            self.run_id.as_ref().unwrap_or(&unknown),
            self.step,
            self.task_id.as_ref().unwrap_or(&unknown)
        )
    }

    fn common(&self) -> serde_json::Map<String, Value> {
        let Value::Object(map) = json!({
            "flow_id": self.flow,
            "user_name": self.user,
            "tags": self.tags,
            "system_tags": self.system_tags,
            "ts_epoch": self.ts_epoch,
        }) else {
            unreachable!("a JSON object literal")
        };
        map
    }

    pub fn flow_body(&self) -> Value {
        json!({"flow_id": self.flow, "ts_epoch": self.ts_epoch})
    }

    /// The run's body; `run_number` only for a given, non-numeric id (the service assigns
    /// numeric ones and refuses them in a body).
    pub fn run_body(&self, with_id: bool) -> Value {
        let mut map = self.common();
        if let Some(run) = self.run_id.as_ref().filter(|_| with_id) {
            map.insert("run_number".into(), run.clone().into());
        }
        Value::Object(map)
    }

    pub fn step_body(&self, run: &str) -> Value {
        let mut map = self.common();
        map.insert("run_number".into(), run.into());
        map.insert("step_name".into(), self.step.clone().into());
        Value::Object(map)
    }

    pub fn task_body(&self, run: &str, task: Option<&str>) -> Value {
        let mut map = self.common();
        map.insert("run_number".into(), run.into());
        map.insert("step_name".into(), self.step.clone().into());
        if let Some(task) = task {
            map.insert("task_id".into(), task.into());
        }
        Value::Object(map)
    }

    /// One metadatum as Metaflow sends it (`_metadata_to_json`) and stores it (`sysmeta_*.json`).
    pub fn datum_body(&self, run: &str, task: &str, datum: &Datum) -> Value {
        json!({
            "flow_id": self.flow,
            "run_number": run,
            "step_name": self.step,
            "task_id": task,
            "field_name": datum.field,
            "type": datum.kind,
            "value": datum.value,
            "tags": [format!("attempt_id:{}", datum.attempt)],
            "user_name": self.user,
            "ts_epoch": datum.ts_epoch,
        })
    }
}

/// Whether an id is a number (the service assigns those; it accepts only other ids in bodies).
pub fn is_numeric(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_digit())
}

/// An id from a reply: the real service answers numbers, metaflow-local-service strings.
pub fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TaskRecord {
        TaskRecord {
            flow: "TrainFlow".into(),
            step: "train".into(),
            user: "jane".into(),
            run_id: None,
            task_id: None,
            ts_epoch: 1_700_000_000_000,
            tags: vec![],
            system_tags: vec!["runtime:mfbatch".into(), "user:jane".into()],
        }
    }

    #[test]
    fn bodies_have_metaflows_fields() {
        let mut r = record();
        assert_eq!(r.run_body(true).get("run_number"), None);
        r.run_id = Some("nightly-3".into());
        assert_eq!(r.run_body(true)["run_number"], "nightly-3");
        let d = Datum::new("aws-batch-job-id", "j-1", 1);
        let body = r.datum_body("12", "34", &d);
        assert_eq!(body["field_name"], "aws-batch-job-id");
        assert_eq!(body["type"], "aws-batch-job-id");
        assert_eq!(body["tags"], json!(["attempt_id:1"]));
        assert_eq!(body["run_number"], "12");
        assert_eq!(r.task_body("12", None).get("task_id"), None);
    }

    #[test]
    fn ids_are_numbers_or_strings() {
        assert_eq!(id_of(Some(&json!(42))), Some("42".into()));
        assert_eq!(id_of(Some(&json!("1712"))), Some("1712".into()));
        assert_eq!(id_of(Some(&json!(null))), None);
        assert!(is_numeric("123") && !is_numeric("a1") && !is_numeric(""));
    }
}
