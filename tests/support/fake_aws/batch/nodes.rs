//! The fake's multi-node parallel jobs, with what moto lacks: node records `<job>#<n>` (each with
//! `nodeDetails`, its own [`Timeline`] and its own log stream), a parent with `nodeProperties`
//! whose status and end follow the main node (the main node moves on with every parent describe,
//! the others only when they are described, so the main node starts first), other nodes stopped
//! when the main node ends, and ListJobs by `multiNodeJobId`. With
//! [`NodesScript::without_node_records`], moto's shape: no node records, the parent runs alone on
//! one shared stream.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use wiremock::ResponseTemplate;

use super::{client_error, summaries_page, Job, JobStatus, State, Timeline};

/// How the next multi-node job (the next SubmitJob of a `multinode` definition) behaves.
#[derive(Debug, Clone, Default)]
pub struct NodesScript {
    /// Node i's timeline; nodes past the end follow the default timeline. Without node records,
    /// the parent follows the first one.
    pub nodes: Vec<Timeline>,
    /// As moto: no `#n` records, every node writing to the parent's own stream.
    pub without_node_records: bool,
}

impl NodesScript {
    /// Node i follows `timeline(i)`, for `num_nodes` nodes.
    pub fn each(num_nodes: usize, timeline: impl FnMut(usize) -> Timeline) -> Self {
        NodesScript {
            nodes: (0..num_nodes).map(timeline).collect(),
            ..Default::default()
        }
    }
}

#[derive(Debug)]
pub(crate) struct ParentNodes {
    num_nodes: usize,
    main_node: usize,
    /// Node ids by index; empty without node records.
    nodes: Vec<String>,
}

/// A node's place in its job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodePlace {
    index: usize,
    is_main: bool,
}

impl Job {
    /// `nodeProperties` of a multi-node parent.
    pub(super) fn node_properties(&self) -> Option<Value> {
        let nodes = self.nodes.as_ref()?;
        Some(json!({
            "numNodes": nodes.num_nodes,
            "mainNode": nodes.main_node,
            "nodeRangeProperties": self.definition["nodeProperties"]["nodeRangeProperties"],
        }))
    }

    /// `nodeDetails` of one node.
    pub(super) fn node_details(&self) -> Option<Value> {
        let place = self.node?;
        Some(json!({ "nodeIndex": place.index, "isMainNode": place.is_main }))
    }

    /// A multi-node parent with node records has no container of its own.
    pub(super) fn without_container(&self) -> bool {
        self.nodes.as_ref().is_some_and(|n| !n.nodes.is_empty())
    }

    /// A multi-node parent without node records (moto's shape) shows only its stream as its
    /// container: no environment (so no end-record nonce), no exit code.
    pub(super) fn shared_stream_only(&self) -> bool {
        self.nodes.as_ref().is_some_and(|n| n.nodes.is_empty())
    }
}

/// `(containerProperties, containerOverrides)` of a job: a multi-node job's from its one node
/// range and its `nodeOverrides`.
pub(super) fn container_sources<'a>(
    definition: &'a Value,
    submit: &'a Value,
) -> (&'a Value, &'a Value) {
    if definition.get("nodeProperties").is_some() {
        (
            &definition["nodeProperties"]["nodeRangeProperties"][0]["container"],
            &submit["nodeOverrides"]["nodePropertyOverrides"][0]["containerOverrides"],
        )
    } else {
        (
            &definition["containerProperties"],
            &submit["containerOverrides"],
        )
    }
}

/// The node count a submit asks for: `nodeOverrides.numNodes`, else the definition's.
pub(super) fn num_nodes(definition: &Value, submit: &Value) -> Option<usize> {
    if definition["type"] != "multinode" {
        return None;
    }
    submit["nodeOverrides"]["numNodes"]
        .as_u64()
        .or_else(|| definition["nodeProperties"]["numNodes"].as_u64())
        .map(|n| n as usize)
}

impl State {
    /// The script of the next multi-node job.
    pub(super) fn next_nodes_script(&mut self) -> NodesScript {
        self.scripted_nodes.pop_front().unwrap_or_default()
    }

    /// Creates the node records of a just-submitted multi-node parent.
    pub(super) fn spawn_nodes(&mut self, parent_id: &str, num_nodes: usize, script: NodesScript) {
        let main_node = self.jobs[parent_id].definition["nodeProperties"]["mainNode"]
            .as_u64()
            .unwrap_or(0) as usize;
        let mut nodes = Vec::new();
        for index in (0..num_nodes).filter(|_| !script.without_node_records) {
            let timeline = self.part_timeline(&script.nodes, index);
            let id = format!("{parent_id}#{index}");
            let node = Job {
                node: Some(NodePlace {
                    index,
                    is_main: index == main_node,
                }),
                ..Job::part_of(&self.jobs[parent_id], id.clone(), timeline)
            };
            self.jobs.insert(id.clone(), node);
            self.enter_phase(&id, 0);
            nodes.push(id);
        }
        let parent = self.jobs.get_mut(parent_id).expect("the parent exists");
        parent.nodes = Some(ParentNodes {
            num_nodes,
            main_node,
            nodes,
        });
    }

    /// One parent describe: the main node moves on a step and the parent takes its status; once
    /// the main node ended, the other nodes are stopped and the parent ends as it did.
    pub(super) fn tick_nodes(&mut self, parent_id: &str) {
        if self.jobs[parent_id].status.is_terminal() {
            return;
        }
        let nodes = self.jobs[parent_id].nodes.as_ref().expect("a parent");
        let (main_id, others) = (nodes.nodes[nodes.main_node].clone(), nodes.nodes.clone());
        self.advance(&main_id);
        self.jobs.get_mut(&main_id).expect("the main node").seen += 1;
        let main = &self.jobs[&main_id];
        let (status, reason, started, stopped) = (
            main.status,
            main.status_reason.clone(),
            main.started_at,
            main.stopped_at,
        );
        if status.is_terminal() {
            // Batch stops the others with the job; that is no failure of theirs.
            for node in others.iter().filter(|id| **id != main_id) {
                self.end_with_the_job(node);
            }
        }
        let parent = self.jobs.get_mut(parent_id).expect("the parent");
        parent.status = status;
        parent.status_reason = reason;
        parent.started_at = started;
        parent.stopped_at = stopped;
    }

    /// TerminateJob / CancelJob on a multi-node parent: every node not yet ended stops, then
    /// the parent (a node's id is stopped alone, as any job).
    pub(super) fn stop_nodes(
        &mut self,
        parent_id: &str,
        reason: &str,
        cancel: bool,
    ) -> ResponseTemplate {
        let nodes = self.jobs[parent_id]
            .nodes
            .as_ref()
            .expect("a parent")
            .nodes
            .clone();
        for node in nodes {
            let body = json!({ "jobId": node, "reason": reason });
            let _ = self.stop_job(&body, cancel);
        }
        let parent = self.jobs.get_mut(parent_id).expect("the parent");
        if !parent.status.is_terminal() {
            parent.status = JobStatus::Failed;
            parent.status_reason = Some(reason.to_owned());
            parent.stopped_at = Some(super::now_ms());
        }
        super::ok(json!({}))
    }

    /// A node still running when the main node ended: stopped, SUCCEEDED without an exit code.
    fn end_with_the_job(&mut self, id: &str) {
        let now = super::now_ms();
        let job = self.jobs.get_mut(id).expect("a node");
        if job.status.is_terminal() {
            return;
        }
        if let Some(attempt) = job.open_attempt() {
            attempt.stopped_at = Some(now);
        }
        job.status = JobStatus::Succeeded;
        job.status_reason = Some("The main node exited".into());
        job.stopped_at = Some(now);
        job.phase = job.phases.len().saturating_sub(1);
        self.release_job_logs(id);
    }

    /// ListJobs by `multiNodeJobId`: the nodes with the status asked (RUNNING without one).
    pub(super) fn list_nodes(&self, parent_id: &str, body: &Value) -> ResponseTemplate {
        let Some(nodes) = self.jobs.get(parent_id).and_then(|j| j.nodes.as_ref()) else {
            return client_error(&format!("{parent_id} is not a multi-node job"));
        };
        let status = body["jobStatus"].as_str().unwrap_or("RUNNING");
        let matching: Vec<&Job> = nodes
            .nodes
            .iter()
            .map(|id| &self.jobs[id])
            .filter(|j| j.status.as_str() == status)
            .collect();
        summaries_page(&matching, body, 100)
    }

    /// When (epoch ms) each node of `parent_id` stopped, for latency measurements.
    pub(crate) fn nodes_stopped_at(&self, parent_id: &str) -> BTreeMap<usize, i64> {
        let Some(nodes) = self.jobs.get(parent_id).and_then(|j| j.nodes.as_ref()) else {
            return BTreeMap::new();
        };
        nodes
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, id)| Some((i, self.jobs[id].stopped_at?)))
            .collect()
    }
}
