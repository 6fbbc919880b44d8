//! Job definitions: built from the spec, named by the hash of their canonical JSON, reused when an
//! ACTIVE revision of that name has exactly that content, and registered otherwise.
//!
//! Resources are placeholders here: each job's cpu, memory and gpu go in its SubmitJob overrides,
//! so one definition serves every size and the number of definitions stays small.

use serde::Serialize;

use super::container::{self, ContainerExtras};
use crate::bootstrap;
use crate::error::{AwsError, Service};
use crate::launch::package::sha256_hex;
use crate::spec::BatchTarget;

/// The platform a queue's compute environments run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Platform {
    #[serde(rename = "EC2")]
    Ec2,
    #[serde(rename = "FARGATE")]
    Fargate,
}

/// The body of RegisterJobDefinition, exactly as sent (see its `Serialize`: a multi-node
/// definition carries the container in its one node range instead).
#[derive(Debug, Clone)]
pub struct JobDefinition {
    pub job_definition_name: String,
    /// `container`, or `multinode` for `--nodes`.
    pub kind: &'static str,
    pub container_properties: ContainerProperties,
    pub platform_capabilities: Vec<Platform>,
    pub propagate_tags: bool,
}

/// A multi-node definition has one node range, `0:`, open-ended, so that SubmitJob's
/// `nodeOverrides.numNodes` sets the node count: one definition serves every `--nodes N`
/// (Metaflow hashes N into the name).
pub const NODE_RANGE: &str = "0:";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    job_definition_name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_properties: Option<&'a ContainerProperties>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_properties: Option<NodeProperties<'a>>,
    platform_capabilities: &'a [Platform],
    propagate_tags: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeProperties<'a> {
    num_nodes: u32,
    main_node: u32,
    node_range_properties: [NodeRange<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRange<'a> {
    target_nodes: &'static str,
    container: &'a ContainerProperties,
}

impl Serialize for JobDefinition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let multinode = self.is_multinode();
        Wire {
            job_definition_name: &self.job_definition_name,
            kind: self.kind,
            container_properties: (!multinode).then_some(&self.container_properties),
            node_properties: multinode.then_some(NodeProperties {
                num_nodes: 1,
                main_node: 0,
                node_range_properties: [NodeRange {
                    target_nodes: NODE_RANGE,
                    container: &self.container_properties,
                }],
            }),
            platform_capabilities: &self.platform_capabilities,
            propagate_tags: self.propagate_tags,
        }
        .serialize(serializer)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProperties {
    pub image: String,
    pub job_role_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    pub command: Vec<String>,
    pub environment: Vec<NameValue>,
    pub resource_requirements: Vec<Requirement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<NetworkConfiguration>,
    /// Linux parameters, volumes, secrets, ulimits, logging, storage (each only when set).
    #[serde(flatten)]
    pub extras: ContainerExtras,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfiguration {
    pub assign_public_ip: &'static str,
}

/// Length of the hash prefix in definition names: 64 bits, far from any collision in practice.
const NAME_HASH_LEN: usize = 16;

impl JobDefinition {
    /// Builds the definition for a target; the name is derived from everything else.
    pub fn build(target: &BatchTarget, platform: Platform) -> Self {
        let fargate = platform == Platform::Fargate;
        let multinode = target.scheduling.nodes.is_some();
        let mut def = JobDefinition {
            job_definition_name: String::new(),
            kind: if multinode { "multinode" } else { "container" },
            container_properties: ContainerProperties {
                image: target.image.to_string(),
                job_role_arn: target.job_role_arn.clone(),
                execution_role_arn: target.execution_role_arn.clone(),
                command: bootstrap::command(),
                environment: vec![NameValue {
                    name: bootstrap::BOOTSTRAP_ENV.into(),
                    value: bootstrap::BOOTSTRAP_PY.into(),
                }],
                // Valid on EC2 and Fargate alike; every job overrides them.
                resource_requirements: vec![
                    Requirement {
                        kind: "VCPU",
                        value: "1".into(),
                    },
                    Requirement {
                        kind: "MEMORY",
                        value: "2048".into(),
                    },
                ],
                network_configuration: fargate.then_some(NetworkConfiguration {
                    assign_public_ip: "ENABLED",
                }),
                extras: ContainerExtras::build(&target.container),
            },
            platform_capabilities: vec![platform],
            propagate_tags: true,
        };
        def.job_definition_name = format!("mfbatch-{}", &def.content_hash()[..NAME_HASH_LEN]);
        def
    }

    pub fn is_multinode(&self) -> bool {
        self.kind == "multinode"
    }

    /// SHA-256 of the canonical JSON (sorted keys, no whitespace) of everything but the name.
    pub fn content_hash(&self) -> String {
        let mut value = serde_json::to_value(self).expect("definition serializes");
        if let Some(map) = value.as_object_mut() {
            map.remove("jobDefinitionName");
        }
        // serde_json's map is ordered by key, so this text is canonical.
        sha256_hex(value.to_string().as_bytes())
    }

    /// The serialized size, checked against Batch's 24 KiB limit.
    pub fn json_len(&self) -> usize {
        serde_json::to_string(self)
            .expect("definition serializes")
            .len()
    }
}

/// A definition that exists in Batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registered {
    pub name: String,
    pub arn: String,
    pub revision: i32,
    /// Whether this run registered it (false: an existing one was reused).
    pub newly_registered: bool,
}

/// Finds the newest ACTIVE revision of the definition's name whose content is the definition's.
///
/// The name alone proves nothing: anyone allowed to register definitions in the account can
/// register a revision named `mfbatch-<hash>` with another image, command, role or volume, and
/// every later run would use it. So each revision is compared with `def`, and one that differs in
/// anything is passed over (the caller then registers its own).
pub async fn find(
    client: &aws_sdk_batch::Client,
    def: &JobDefinition,
) -> Result<Option<Registered>, AwsError> {
    let name = def.job_definition_name.as_str();
    let mut best: Option<Registered> = None;
    let mut next_token = None;
    loop {
        let out = client
            .describe_job_definitions()
            .job_definition_name(name)
            .status("ACTIVE")
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Service::Batch, "DescribeJobDefinitions", e))?;
        for found in out.job_definitions() {
            let (Some(arn), Some(revision)) = (found.job_definition_arn(), found.revision()) else {
                continue;
            };
            if found.job_definition_name() != Some(name)
                || !same_content(found, def)
                || best.as_ref().is_some_and(|b| b.revision >= revision)
            {
                continue;
            }
            best = Some(Registered {
                name: name.to_owned(),
                arn: arn.to_owned(),
                revision,
                newly_registered: false,
            });
        }
        next_token = out.next_token().map(str::to_owned);
        if next_token.is_none() {
            return Ok(best);
        }
    }
}

/// Whether a registered revision is `def`: everything `def` sets has the same value (that is,
/// everything its name's hash covers), and nothing `def` leaves unset is set.
pub fn same_content(found: &aws_sdk_batch::types::JobDefinition, def: &JobDefinition) -> bool {
    let container = if def.is_multinode() {
        our_node_range(found).filter(|_| found.container_properties().is_none())
    } else {
        found
            .container_properties()
            .filter(|_| found.node_properties().is_none())
    };
    let Some(p) = container else {
        return false;
    };
    same_fields(found, p, def) && nothing_else(found, p)
}

/// The container of a multi-node revision shaped as mfbatch registers them (one node, main node
/// 0, one range `0:`), else `None`.
fn our_node_range(
    found: &aws_sdk_batch::types::JobDefinition,
) -> Option<&aws_sdk_batch::types::ContainerProperties> {
    let nodes = found.node_properties()?;
    let [range] = nodes.node_range_properties() else {
        return None;
    };
    let shaped = nodes.num_nodes() == Some(1)
        && nodes.main_node() == Some(0)
        && range.target_nodes() == Some(NODE_RANGE)
        && range.instance_types().is_empty()
        && range.ecs_properties().is_none()
        && range.eks_properties().is_none();
    shaped.then(|| range.container()).flatten()
}

/// Name/value pairs in a canonical order (Batch may return them in any).
fn sorted(pairs: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut v: Vec<_> = pairs.collect();
    v.sort();
    v
}

/// Every field mfbatch sets has the value it would set.
fn same_fields(
    found: &aws_sdk_batch::types::JobDefinition,
    p: &aws_sdk_batch::types::ContainerProperties,
    def: &JobDefinition,
) -> bool {
    let ours = &def.container_properties;
    let environment = sorted(p.environment().iter().map(|kv| {
        (
            kv.name().unwrap_or_default().to_owned(),
            kv.value().unwrap_or_default().to_owned(),
        )
    }));
    let our_environment = sorted(
        ours.environment
            .iter()
            .map(|kv| (kv.name.clone(), kv.value.clone())),
    );
    let resources = sorted(p.resource_requirements().iter().map(|r| {
        (
            r.r#type()
                .map(|t| t.as_str())
                .unwrap_or_default()
                .to_owned(),
            r.value().unwrap_or_default().to_owned(),
        )
    }));
    let our_resources = sorted(
        ours.resource_requirements
            .iter()
            .map(|r| (r.kind.to_owned(), r.value.clone())),
    );
    let mut platforms: Vec<&str> = found
        .platform_capabilities()
        .iter()
        .map(|p| p.as_str())
        .collect();
    platforms.sort_unstable();
    let mut our_platforms: Vec<&str> = def
        .platform_capabilities
        .iter()
        .map(|p| match p {
            Platform::Ec2 => "EC2",
            Platform::Fargate => "FARGATE",
        })
        .collect();
    our_platforms.sort_unstable();
    let network_ok = match &ours.network_configuration {
        Some(net) => p
            .network_configuration()
            .and_then(|n| n.assign_public_ip())
            .is_some_and(|ip| ip.as_str() == net.assign_public_ip),
        // Only Fargate uses it; on EC2 Batch ignores it.
        None => true,
    };
    found.r#type() == Some(def.kind)
        && found.propagate_tags().unwrap_or(false) == def.propagate_tags
        && platforms == our_platforms
        && p.image() == Some(ours.image.as_str())
        && p.job_role_arn() == Some(ours.job_role_arn.as_str())
        && p.execution_role_arn() == ours.execution_role_arn.as_deref()
        && p.command() == ours.command.as_slice()
        && environment == our_environment
        && resources == our_resources
        && network_ok
        && container::from_sdk(p) == ours.extras
}

/// What mfbatch never sets is not set either: a read-only root, another architecture, registry
/// credentials, default retries or timeouts would all change what the job does. (Volumes,
/// privileges, users, secrets and logging are compared exactly in [`same_fields`].)
fn nothing_else(
    found: &aws_sdk_batch::types::JobDefinition,
    p: &aws_sdk_batch::types::ContainerProperties,
) -> bool {
    let default_platform = p
        .fargate_platform_configuration()
        .is_none_or(|f| f.platform_version().is_none_or(|v| v == "LATEST"));
    let default_runtime = p.runtime_platform().is_none_or(|r| {
        r.operating_system_family().is_none_or(|o| o == "LINUX")
            && r.cpu_architecture().is_none_or(|a| a == "X86_64")
    });
    let container_defaults = p.readonly_root_filesystem() != Some(true)
        && p.enable_execute_command() != Some(true)
        && p.instance_type().is_none()
        && p.repository_credentials().is_none()
        && default_platform
        && default_runtime;
    container_defaults
        && found.retry_strategy().is_none()
        && found.timeout().is_none()
        && found.parameters().is_none_or(|m| m.is_empty())
        && found.ecs_properties().is_none()
        && found.eks_properties().is_none()
        && found.scheduling_priority().is_none()
        && found.consumable_resource_properties().is_none()
}

/// Registers the definition (the caller has looked for an ACTIVE one with [`find`]).
///
/// Two processes registering the same content at once just create two identical revisions, and
/// the job is submitted with the ARN that RegisterJobDefinition returned, so neither a concurrent
/// registration nor a definition not yet visible to DescribeJobDefinitions can break a run.
pub async fn register(
    client: &aws_sdk_batch::Client,
    def: &JobDefinition,
) -> Result<Registered, AwsError> {
    use aws_sdk_batch::types::{JobDefinitionType, PlatformCapability};
    let props = sdk_container(&def.container_properties);
    let platforms = def.platform_capabilities.iter().map(|p| match p {
        Platform::Ec2 => PlatformCapability::Ec2,
        Platform::Fargate => PlatformCapability::Fargate,
    });
    let request = client
        .register_job_definition()
        .job_definition_name(&def.job_definition_name)
        .set_platform_capabilities(Some(platforms.collect()))
        .propagate_tags(def.propagate_tags);
    let request = if def.is_multinode() {
        use aws_sdk_batch::types::{NodeProperties, NodeRangeProperty};
        let range = NodeRangeProperty::builder()
            .target_nodes(NODE_RANGE)
            .container(props)
            .build();
        let nodes = NodeProperties::builder()
            .num_nodes(1)
            .main_node(0)
            .node_range_properties(range)
            .build();
        request
            .r#type(JobDefinitionType::Multinode)
            .node_properties(nodes)
    } else {
        request
            .r#type(JobDefinitionType::Container)
            .container_properties(props)
    };
    let out = request
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(Service::Batch, "RegisterJobDefinition", e))?;
    let arn = out.job_definition_arn().ok_or_else(|| {
        AwsError::incomplete(Service::Batch, "RegisterJobDefinition", "jobDefinitionArn")
    })?;
    Ok(Registered {
        name: out
            .job_definition_name()
            .unwrap_or(&def.job_definition_name)
            .to_owned(),
        arn: arn.to_owned(),
        revision: out.revision().unwrap_or(0),
        newly_registered: true,
    })
}

/// The SDK's form of our container properties.
fn sdk_container(p: &ContainerProperties) -> aws_sdk_batch::types::ContainerProperties {
    use aws_sdk_batch::types::{
        AssignPublicIp, ContainerProperties as Props, KeyValuePair, NetworkConfiguration as Net,
        ResourceRequirement, ResourceType,
    };
    let mut props = Props::builder()
        .image(&p.image)
        .job_role_arn(&p.job_role_arn)
        .set_execution_role_arn(p.execution_role_arn.clone())
        .set_command(Some(p.command.clone()));
    for kv in &p.environment {
        props = props.environment(
            KeyValuePair::builder()
                .name(&kv.name)
                .value(&kv.value)
                .build(),
        );
    }
    for r in &p.resource_requirements {
        props = props.resource_requirements(
            ResourceRequirement::builder()
                .r#type(ResourceType::from(r.kind))
                .value(&r.value)
                .build(),
        );
    }
    if let Some(net) = &p.network_configuration {
        props = props.network_configuration(
            Net::builder()
                .assign_public_ip(AssignPublicIp::from(net.assign_public_ip))
                .build(),
        );
    }
    container::apply(&p.extras, props).build()
}
