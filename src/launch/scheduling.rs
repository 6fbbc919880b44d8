//! SubmitJob's scheduling parts, never in the job definition: `arrayProperties`, `dependsOn`,
//! `schedulingPriorityOverride`, `shareIdentifier` and, for a multi-node job, `nodeOverrides`
//! (which then carry the container overrides instead of `containerOverrides`). Part of the one
//! [`super::submit::SubmitRequest`] value that both `--dry-run` and the SDK call come from.

use serde::Serialize;

use super::jobdef::NODE_RANGE;
use super::submit::ContainerOverrides;
use crate::spec::Scheduling;

/// The scheduling fields of SubmitJob, each only when set.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitScheduling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array_properties: Option<ArrayProperties>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DependsOn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling_priority_override: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_overrides: Option<NodeOverrides>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArrayProperties {
    pub size: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DependsOn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeOverrides {
    pub num_nodes: u32,
    pub node_property_overrides: Vec<NodePropertyOverride>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePropertyOverride {
    pub target_nodes: &'static str,
    pub container_overrides: ContainerOverrides,
}

impl SubmitScheduling {
    /// The fields for a job's scheduling options; the node overrides are filled in by
    /// [`SubmitScheduling::take_overrides`] once the container overrides are final.
    pub fn build(scheduling: &Scheduling) -> Self {
        let mut depends_on: Vec<DependsOn> = scheduling
            .depends_on
            .iter()
            .map(|d| DependsOn {
                job_id: Some(d.job_id.clone()),
                kind: d.n_to_n.then_some("N_TO_N"),
            })
            .collect();
        if scheduling.array.as_ref().is_some_and(|a| a.sequential) {
            depends_on.push(DependsOn {
                job_id: None,
                kind: Some("SEQUENTIAL"),
            });
        }
        SubmitScheduling {
            array_properties: scheduling.array_size().map(|size| ArrayProperties { size }),
            depends_on,
            scheduling_priority_override: scheduling.priority,
            share_identifier: scheduling.share.clone(),
            node_overrides: scheduling.nodes.map(|num_nodes| NodeOverrides {
                num_nodes,
                node_property_overrides: Vec::new(),
            }),
        }
    }

    /// A multi-node job gives its container overrides to every node through `nodeOverrides`
    /// (SubmitJob takes no `containerOverrides` for it); others keep them.
    pub fn take_overrides(&mut self, overrides: &mut ContainerOverrides) {
        if let Some(nodes) = &mut self.node_overrides {
            overrides.moved_to_nodes = true;
            nodes.node_property_overrides = vec![NodePropertyOverride {
                target_nodes: NODE_RANGE,
                container_overrides: ContainerOverrides {
                    moved_to_nodes: false,
                    ..overrides.clone()
                },
            }];
        }
    }

    /// Sets these fields on the SDK's request; `overrides` go to the nodes or the container.
    pub fn apply(
        &self,
        request: aws_sdk_batch::operation::submit_job::builders::SubmitJobFluentBuilder,
        overrides: aws_sdk_batch::types::ContainerOverrides,
    ) -> aws_sdk_batch::operation::submit_job::builders::SubmitJobFluentBuilder {
        use aws_sdk_batch::types as sdk;
        let mut request = request
            .set_array_properties(
                self.array_properties
                    .as_ref()
                    .map(|a| sdk::ArrayProperties::builder().size(a.size as i32).build()),
            )
            .set_scheduling_priority_override(self.scheduling_priority_override.map(|p| p as i32))
            .set_share_identifier(self.share_identifier.clone());
        for d in &self.depends_on {
            request = request.depends_on(
                sdk::JobDependency::builder()
                    .set_job_id(d.job_id.clone())
                    .set_type(d.kind.map(sdk::ArrayJobDependency::from))
                    .build(),
            );
        }
        match &self.node_overrides {
            Some(nodes) => {
                let mut node_overrides =
                    sdk::NodeOverrides::builder().num_nodes(nodes.num_nodes as i32);
                for n in &nodes.node_property_overrides {
                    node_overrides = node_overrides.node_property_overrides(
                        sdk::NodePropertyOverride::builder()
                            .target_nodes(n.target_nodes)
                            .container_overrides(overrides.clone())
                            .build(),
                    );
                }
                request.node_overrides(node_overrides.build())
            }
            None => request.container_overrides(overrides),
        }
    }
}
