//! The container properties of a job definition beyond image, command, roles and environment:
//! Linux parameters, ulimits, volumes, secrets, logging and storage, built from
//! [`crate::spec::ContainerOptions`], sent through the SDK, and read back from a registered
//! revision so that reuse compares them exactly (a look-alike with one more volume is not ours).
//!
//! Every list is in a canonical order and every empty part is left out, so the same options in
//! any order hash the same, and a job with none of them keeps the definition it had before.

use std::collections::BTreeMap;

use aws_sdk_batch::types as sdk;
use serde::Serialize;

use crate::launch::package::sha256_hex;
use crate::spec::ContainerOptions;

/// The optional container properties, as sent in RegisterJobDefinition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerExtras {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linux_parameters: Option<LinuxParameters>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<UlimitJson>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<MountPoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<LogConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<EphemeralStorage>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_memory_size: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<TmpfsJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_swap: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swappiness: Option<u8>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub init_process_enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TmpfsJson {
    pub container_path: String,
    pub size: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub host_path: String,
    pub container_path: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UlimitJson {
    pub name: String,
    pub soft_limit: i32,
    pub hard_limit: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub efs_volume_configuration: Option<Efs>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub source_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Efs {
    pub file_system_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_directory: Option<String>,
    pub transit_encryption: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_config: Option<EfsAuthorization>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EfsAuthorization {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_point_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iam: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    pub source_volume: String,
    pub container_path: String,
    /// Always sent (moto fails a job whose mount point lacks it).
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretJson {
    pub name: String,
    pub value_from: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogConfiguration {
    pub log_driver: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralStorage {
    #[serde(rename = "sizeInGiB")]
    pub size_in_gib: u32,
}

const READ_WRITE: [&str; 2] = ["READ", "WRITE"];

/// A volume name from what it mounts: the same host path or EFS configuration always gets the
/// same name (Metaflow's `path.replace('/', '_')` made `/a.b` and `/a_b` collide).
fn volume_name(prefix: &str, what: &str) -> String {
    format!("{prefix}-{}", &sha256_hex(what.as_bytes())[..12])
}

impl ContainerExtras {
    /// The properties for `options` (already in canonical order).
    pub fn build(options: &ContainerOptions) -> Self {
        let linux = LinuxParameters {
            shared_memory_size: options.shared_memory_mib,
            tmpfs: options
                .tmpfs
                .iter()
                .map(|t| TmpfsJson {
                    container_path: t.container_path.clone(),
                    size: t.size_mib,
                    mount_options: t.mount_options.clone(),
                })
                .collect(),
            max_swap: options.max_swap_mib,
            swappiness: options.swappiness,
            devices: (0..options.neuron_devices)
                .map(|i| Device {
                    host_path: format!("/dev/neuron{i}"),
                    container_path: format!("/dev/neuron{i}"),
                    permissions: READ_WRITE.map(str::to_owned).to_vec(),
                })
                .collect(),
            init_process_enabled: options.init,
        };
        let (volumes, mount_points) = volumes(options);
        let log_configuration = (options.log_group.is_some() || !options.log_options.is_empty())
            .then(|| {
                let mut log_options = options.log_options.clone();
                if let Some(group) = &options.log_group {
                    log_options.insert("awslogs-group".into(), group.clone());
                }
                LogConfiguration {
                    log_driver: "awslogs".into(),
                    options: log_options,
                }
            });
        ContainerExtras {
            linux_parameters: (linux != LinuxParameters::default()).then_some(linux),
            ulimits: options
                .ulimits
                .iter()
                .map(|u| UlimitJson {
                    name: u.name.clone(),
                    soft_limit: u.soft,
                    hard_limit: u.hard,
                })
                .collect(),
            privileged: options.privileged,
            user: options.user.clone(),
            volumes,
            mount_points,
            secrets: options
                .secrets
                .iter()
                .map(|s| SecretJson {
                    name: s.name.clone(),
                    value_from: s.value_from.clone(),
                })
                .collect(),
            log_configuration,
            ephemeral_storage: options
                .ephemeral_storage_gib
                .map(|size_in_gib| EphemeralStorage { size_in_gib }),
        }
    }
}

/// Host and EFS volumes with their mount points, named by content and sorted by name.
fn volumes(options: &ContainerOptions) -> (Vec<Volume>, Vec<MountPoint>) {
    let mut volumes: BTreeMap<String, Volume> = BTreeMap::new();
    let mut mounts = Vec::new();
    for v in &options.volumes {
        let name = volume_name("host", &v.host_path);
        volumes.entry(name.clone()).or_insert_with(|| Volume {
            name: name.clone(),
            host: Some(Host {
                source_path: v.host_path.clone(),
            }),
            efs_volume_configuration: None,
        });
        mounts.push(MountPoint {
            source_volume: name,
            container_path: v.container_path.clone(),
            read_only: v.read_only,
        });
    }
    for e in &options.efs {
        let efs = Efs {
            file_system_id: e.file_system_id.clone(),
            root_directory: e.root_directory.clone(),
            transit_encryption: "ENABLED".into(),
            authorization_config: (e.access_point_id.is_some() || e.iam).then(|| {
                EfsAuthorization {
                    access_point_id: e.access_point_id.clone(),
                    iam: e.iam.then(|| "ENABLED".into()),
                }
            }),
        };
        let key = serde_json::to_string(&efs).expect("serializes");
        let name = volume_name(&format!("efs-{}", e.file_system_id), &key);
        volumes.entry(name.clone()).or_insert_with(|| Volume {
            name: name.clone(),
            host: None,
            efs_volume_configuration: Some(efs),
        });
        mounts.push(MountPoint {
            source_volume: name,
            container_path: e.container_path.clone(),
            read_only: e.read_only,
        });
    }
    mounts.sort_by(|a, b| a.container_path.cmp(&b.container_path));
    (volumes.into_values().collect(), mounts)
}

/// Sends the extras through the SDK's builder.
pub fn apply(
    extras: &ContainerExtras,
    mut props: sdk::builders::ContainerPropertiesBuilder,
) -> sdk::builders::ContainerPropertiesBuilder {
    if let Some(l) = &extras.linux_parameters {
        props = props.linux_parameters(sdk_linux_parameters(l));
    }
    for u in &extras.ulimits {
        props = props.ulimits(
            sdk::Ulimit::builder()
                .name(&u.name)
                .soft_limit(u.soft_limit)
                .hard_limit(u.hard_limit)
                .build(),
        );
    }
    for v in &extras.volumes {
        props = props.volumes(sdk_volume(v));
    }
    for m in &extras.mount_points {
        props = props.mount_points(
            sdk::MountPoint::builder()
                .source_volume(&m.source_volume)
                .container_path(&m.container_path)
                .read_only(m.read_only)
                .build(),
        );
    }
    for s in &extras.secrets {
        let secret = sdk::Secret::builder()
            .name(&s.name)
            .value_from(&s.value_from)
            .build();
        props = props.secrets(secret);
    }
    if let Some(log) = &extras.log_configuration {
        props = props.log_configuration(sdk_log_configuration(log));
    }
    if let Some(storage) = &extras.ephemeral_storage {
        let storage = sdk::EphemeralStorage::builder()
            .size_in_gib(storage.size_in_gib as i32)
            .build();
        props = props.ephemeral_storage(storage);
    }
    props
        .set_privileged(extras.privileged.then_some(true))
        .set_user(extras.user.clone())
}

fn sdk_linux_parameters(l: &LinuxParameters) -> sdk::LinuxParameters {
    let mut lp = sdk::LinuxParameters::builder()
        .set_shared_memory_size(l.shared_memory_size.map(|v| v as i32))
        .set_max_swap(l.max_swap.map(|v| v as i32))
        .set_swappiness(l.swappiness.map(i32::from))
        .set_init_process_enabled(l.init_process_enabled.then_some(true));
    for t in &l.tmpfs {
        lp = lp.tmpfs(
            sdk::Tmpfs::builder()
                .container_path(&t.container_path)
                .size(t.size as i32)
                .set_mount_options((!t.mount_options.is_empty()).then(|| t.mount_options.clone()))
                .build(),
        );
    }
    for d in &l.devices {
        let permissions = d
            .permissions
            .iter()
            .map(|p| sdk::DeviceCgroupPermission::from(p.as_str()));
        lp = lp.devices(
            sdk::Device::builder()
                .host_path(&d.host_path)
                .container_path(&d.container_path)
                .set_permissions(Some(permissions.collect()))
                .build(),
        );
    }
    lp.build()
}

fn sdk_log_configuration(log: &LogConfiguration) -> sdk::LogConfiguration {
    sdk::LogConfiguration::builder()
        .log_driver(sdk::LogDriver::from(log.log_driver.as_str()))
        .set_options((!log.options.is_empty()).then(|| log.options.clone().into_iter().collect()))
        .build()
}

fn sdk_volume(v: &Volume) -> sdk::Volume {
    let efs = v.efs_volume_configuration.as_ref().map(|e| {
        let auth = e.authorization_config.as_ref().map(|a| {
            sdk::EfsAuthorizationConfig::builder()
                .set_access_point_id(a.access_point_id.clone())
                .set_iam(a.iam.as_deref().map(sdk::EfsAuthorizationConfigIam::from))
                .build()
        });
        sdk::EfsVolumeConfiguration::builder()
            .file_system_id(&e.file_system_id)
            .set_root_directory(e.root_directory.clone())
            .transit_encryption(sdk::EfsTransitEncryption::from(
                e.transit_encryption.as_str(),
            ))
            .set_authorization_config(auth)
            .build()
    });
    sdk::Volume::builder()
        .name(&v.name)
        .set_host(
            v.host
                .as_ref()
                .map(|h| sdk::Host::builder().source_path(&h.source_path).build()),
        )
        .set_efs_volume_configuration(efs)
        .build()
}

/// What a registered revision sets of the extras, in our canonical form: equal to ours exactly
/// when it is the same (a revision with anything more differs).
pub fn from_sdk(p: &sdk::ContainerProperties) -> ContainerExtras {
    let linux = p.linux_parameters().map(linux_from_sdk);
    let mut extras = ContainerExtras {
        linux_parameters: linux.filter(|l| *l != LinuxParameters::default()),
        ulimits: p
            .ulimits()
            .iter()
            .map(|u| UlimitJson {
                name: u.name().unwrap_or_default().to_owned(),
                soft_limit: u.soft_limit().unwrap_or_default(),
                hard_limit: u.hard_limit().unwrap_or_default(),
            })
            .collect(),
        privileged: p.privileged() == Some(true),
        user: p.user().map(str::to_owned),
        volumes: p.volumes().iter().map(volume_from_sdk).collect(),
        mount_points: p
            .mount_points()
            .iter()
            .map(|m| MountPoint {
                source_volume: m.source_volume().unwrap_or_default().to_owned(),
                container_path: m.container_path().unwrap_or_default().to_owned(),
                read_only: m.read_only() == Some(true),
            })
            .collect(),
        secrets: p
            .secrets()
            .iter()
            .map(|s| SecretJson {
                name: s.name().unwrap_or_default().to_owned(),
                value_from: s.value_from().unwrap_or_default().to_owned(),
            })
            .collect(),
        log_configuration: p.log_configuration().map(log_from_sdk),
        ephemeral_storage: p.ephemeral_storage().map(|e| EphemeralStorage {
            size_in_gib: e.size_in_gib().unwrap_or_default() as u32,
        }),
    };
    // Batch may answer lists in any order.
    extras.sort_lists();
    extras
}

impl ContainerExtras {
    /// Puts every list in the canonical order (the same options in any order hash the same).
    fn sort_lists(&mut self) {
        if let Some(l) = &mut self.linux_parameters {
            l.tmpfs
                .sort_by(|a, b| a.container_path.cmp(&b.container_path));
            l.devices
                .sort_by(|a, b| a.container_path.cmp(&b.container_path));
        }
        self.ulimits.sort_by(|a, b| a.name.cmp(&b.name));
        self.volumes.sort_by(|a, b| a.name.cmp(&b.name));
        self.mount_points
            .sort_by(|a, b| a.container_path.cmp(&b.container_path));
        self.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

fn linux_from_sdk(l: &sdk::LinuxParameters) -> LinuxParameters {
    LinuxParameters {
        shared_memory_size: l.shared_memory_size().map(|v| v as u32),
        tmpfs: l
            .tmpfs()
            .iter()
            .map(|t| TmpfsJson {
                container_path: t.container_path().unwrap_or_default().to_owned(),
                size: t.size().unwrap_or_default() as u32,
                mount_options: t.mount_options().to_vec(),
            })
            .collect(),
        max_swap: l.max_swap().map(|v| v as u32),
        swappiness: l.swappiness().map(|v| v.clamp(0, 255) as u8),
        devices: l
            .devices()
            .iter()
            .map(|d| Device {
                host_path: d.host_path().unwrap_or_default().to_owned(),
                container_path: d.container_path().unwrap_or_default().to_owned(),
                permissions: d
                    .permissions()
                    .iter()
                    .map(|p| p.as_str().to_owned())
                    .collect(),
            })
            .collect(),
        init_process_enabled: l.init_process_enabled() == Some(true),
    }
}

fn log_from_sdk(l: &sdk::LogConfiguration) -> LogConfiguration {
    LogConfiguration {
        // Secret options are never ours: a driver name no one uses makes it differ.
        log_driver: if l.secret_options().is_empty() {
            l.log_driver()
                .map(|d| d.as_str())
                .unwrap_or_default()
                .to_owned()
        } else {
            "(with secret options)".to_owned()
        },
        options: l
            .options()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

fn volume_from_sdk(v: &sdk::Volume) -> Volume {
    Volume {
        name: v.name().unwrap_or_default().to_owned(),
        host: v.host().map(|h| Host {
            source_path: h.source_path().unwrap_or_default().to_owned(),
        }),
        efs_volume_configuration: v.efs_volume_configuration().map(|e| Efs {
            file_system_id: e.file_system_id().unwrap_or_default().to_owned(),
            root_directory: e.root_directory().map(str::to_owned),
            transit_encryption: e
                .transit_encryption()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            authorization_config: e.authorization_config().map(|a| EfsAuthorization {
                access_point_id: a.access_point_id().map(str::to_owned),
                iam: a.iam().map(|i| i.as_str().to_owned()),
            }),
        }),
    }
}
