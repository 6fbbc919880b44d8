//! The container options of a Batch job (`--shm`, `--tmpfs`, `--volume`, `--secret`, …): parsed
//! from their settings and checked here, before any AWS call; the queue's platform is checked
//! against them in [`ContainerOptions::check_platform`] once the queue is known (still before
//! anything is uploaded). They all go into the content-hashed job definition.

use std::collections::BTreeMap;

use crate::error::ConfigError;
use crate::launch::jobdef::Platform;
use crate::settings::batch_keys::{boolean, list_items};
use crate::settings::{BatchKey, Key, Origin, Resolved, Settings};

/// The container options, validated; everything empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerOptions {
    pub shared_memory_mib: Option<u32>,
    pub tmpfs: Vec<Tmpfs>,
    pub max_swap_mib: Option<u32>,
    pub swappiness: Option<u8>,
    pub volumes: Vec<HostVolume>,
    pub efs: Vec<EfsVolume>,
    pub secrets: Vec<Secret>,
    pub ulimits: Vec<Ulimit>,
    pub privileged: bool,
    pub init: bool,
    pub user: Option<String>,
    /// Neuron devices (Inferentia, Trainium): `/dev/neuron0` … `/dev/neuron{n-1}`.
    pub neuron_devices: u32,
    pub ephemeral_storage_gib: Option<u32>,
    /// `awslogs-group`; `None` with options: Batch's default group.
    pub log_group: Option<String>,
    pub log_options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub container_path: String,
    pub size_mib: u32,
    pub mount_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    pub host_path: String,
    pub container_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfsVolume {
    pub file_system_id: String,
    pub container_path: String,
    pub root_directory: Option<String>,
    pub access_point_id: Option<String>,
    pub iam: bool,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The variable the step sees.
    pub name: String,
    /// A Secrets Manager ARN, an SSM parameter ARN, or an SSM parameter name.
    pub value_from: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ulimit {
    pub name: String,
    pub soft: i32,
    pub hard: i32,
}

/// Batch's (ECS's) ulimit names.
const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// The tmpfs mount options ECS takes (options with `=` take a value).
const TMPFS_OPTIONS: [&str; 40] = [
    "defaults",
    "ro",
    "rw",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "bind",
    "rbind",
    "unbindable",
    "runbindable",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "mode",
    "uid",
    "gid",
    "nr_inodes",
    "nr_blocks",
    "mpol",
    "size",
];

/// Most Neuron devices one instance has (trn1.32xlarge: 16), with headroom.
const MAX_NEURON_DEVICES: u32 = 64;

/// One setting's value with what is needed to blame it in an error.
struct Source<'a> {
    key: BatchKey,
    resolved: &'a Resolved,
}

impl Source<'_> {
    /// An error naming the flag when the value came from it, else the setting and its origin.
    fn bad(&self, value: &str, reason: impl Into<String>) -> ConfigError {
        let reason = reason.into();
        match self.resolved.origin {
            Origin::Flag(_) => ConfigError::InvalidFlag {
                flag: self.key.flag(),
                value: value.to_owned(),
                reason,
            },
            _ => ConfigError::InvalidSetting {
                key: self.key.name(),
                value: value.to_owned(),
                origin: self.resolved.origin.to_string(),
                reason,
            },
        }
    }

    fn items(&self) -> Result<Vec<String>, ConfigError> {
        list_items(&self.resolved.value).map_err(|reason| self.bad(&self.resolved.value, reason))
    }

    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
        &self,
        range: std::ops::RangeInclusive<T>,
        unit: &str,
    ) -> Result<T, ConfigError> {
        let text = self.resolved.value.trim();
        text.parse::<T>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                self.bad(
                    text,
                    format!(
                        "expected a whole number of {unit} from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            })
    }

    fn flag(&self) -> Result<bool, ConfigError> {
        boolean(&self.resolved.value)
            .ok_or_else(|| self.bad(&self.resolved.value, "expected true or false"))
    }
}

/// An error about a setting's whole value, naming its flag when it came from one.
pub(crate) fn blame(key: BatchKey, resolved: &Resolved, reason: &str) -> ConfigError {
    Source { key, resolved }.bad(&resolved.value, reason)
}

fn source(settings: &Settings, key: BatchKey) -> Option<Source<'_>> {
    settings
        .resolved(Key::Batch(key))
        .map(|resolved| Source { key, resolved })
}

impl ContainerOptions {
    /// Reads and checks every container option from the settings (flags included).
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let mut o = ContainerOptions::default();
        let get = |key| source(settings, key);
        if let Some(s) = get(BatchKey::SharedMemory) {
            o.shared_memory_mib = Some(s.number(1..=1_048_576, "MiB")?);
        }
        if let Some(s) = get(BatchKey::MaxSwap) {
            o.max_swap_mib = Some(s.number(0..=1_048_576, "MiB")?);
        }
        if let Some(s) = get(BatchKey::Swappiness) {
            o.swappiness = Some(s.number(0..=100, "percent")?);
        }
        if let Some(s) = get(BatchKey::Neuron) {
            o.neuron_devices = s.number(0..=MAX_NEURON_DEVICES, "devices")?;
        }
        if let Some(s) = get(BatchKey::EphemeralStorage) {
            o.ephemeral_storage_gib = Some(s.number(21..=200, "GiB (Fargate takes 21-200)")?);
        }
        if let Some(s) = get(BatchKey::Privileged) {
            o.privileged = s.flag()?;
        }
        if let Some(s) = get(BatchKey::Init) {
            o.init = s.flag()?;
        }
        if let Some(s) = get(BatchKey::ContainerUser) {
            o.user = Some(parse_user(&s)?);
        }
        if let Some(s) = get(BatchKey::Tmpfs) {
            o.tmpfs = each(&s, parse_tmpfs)?;
            unique(&s, o.tmpfs.iter().map(|t| &t.container_path), "a tmpfs")?;
        }
        if let Some(s) = get(BatchKey::HostVolumes) {
            o.volumes = each(&s, parse_volume)?;
        }
        if let Some(s) = get(BatchKey::EfsVolumes) {
            o.efs = each(&s, parse_efs)?;
        }
        if let Some(s) = get(BatchKey::Secrets) {
            o.secrets = each(&s, parse_secret)?;
            unique(&s, o.secrets.iter().map(|x| &x.name), "a secret")?;
        }
        if let Some(s) = get(BatchKey::Ulimits) {
            o.ulimits = each(&s, parse_ulimit)?;
            unique(&s, o.ulimits.iter().map(|u| &u.name), "a ulimit")?;
        }
        if let Some(s) = get(BatchKey::LogGroup) {
            o.log_group = Some(parse_log_group(&s)?);
        }
        if let Some(s) = get(BatchKey::LogOptions) {
            o.log_options = parse_log_options(&s)?;
        }
        let mounts = o.volumes.iter().map(|v| &v.container_path);
        let mounts = mounts.chain(o.efs.iter().map(|e| &e.container_path));
        if let Some(s) = get(BatchKey::HostVolumes).or_else(|| get(BatchKey::EfsVolumes)) {
            unique(&s, mounts, "a volume")?;
        }
        o.canonicalize();
        Ok(o)
    }

    /// Sorts every list, so the same options in any order make the same definition.
    fn canonicalize(&mut self) {
        self.tmpfs
            .sort_by(|a, b| a.container_path.cmp(&b.container_path));
        self.volumes
            .sort_by(|a, b| a.container_path.cmp(&b.container_path));
        self.efs
            .sort_by(|a, b| a.container_path.cmp(&b.container_path));
        self.secrets.sort_by(|a, b| a.name.cmp(&b.name));
        self.ulimits.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Whether any option is set.
    pub fn is_empty(&self) -> bool {
        *self == ContainerOptions::default()
    }

    /// The first option the platform does not take, as `(flag, value, why)`.
    pub fn check_platform(&self, platform: Platform) -> Option<(&'static str, String, String)> {
        let fargate = platform == Platform::Fargate;
        let on_fargate = |flag: &'static str, value: String| {
            Some((
                flag,
                value,
                "runs on Fargate, which does not take it (EC2 queues only)".to_owned(),
            ))
        };
        if !fargate {
            return self.ephemeral_storage_gib.map(|g| {
                (
                    "--ephemeral-storage",
                    g.to_string(),
                    "runs on EC2, where the instance's disk is used (Fargate queues only)"
                        .to_owned(),
                )
            });
        }
        if let Some(v) = self.shared_memory_mib {
            return on_fargate("--shm", v.to_string());
        }
        if let Some(t) = self.tmpfs.first() {
            return on_fargate("--tmpfs", t.container_path.clone());
        }
        if let Some(v) = self.max_swap_mib {
            return on_fargate("--max-swap", v.to_string());
        }
        if let Some(v) = self.swappiness {
            return on_fargate("--swappiness", v.to_string());
        }
        if let Some(v) = self.volumes.first() {
            return on_fargate("--volume", v.host_path.clone());
        }
        if let Some(u) = self.ulimits.first() {
            return on_fargate("--ulimit", u.name.clone());
        }
        if self.privileged {
            return on_fargate("--privileged", "true".into());
        }
        if self.neuron_devices > 0 {
            return on_fargate("--neuron", self.neuron_devices.to_string());
        }
        None
    }
}

fn each<T>(
    source: &Source<'_>,
    parse: impl Fn(&Source<'_>, &str) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    source
        .items()?
        .iter()
        .map(|item| parse(source, item.trim()))
        .collect()
}

fn unique<'a>(
    source: &Source<'_>,
    values: impl Iterator<Item = &'a String>,
    what: &str,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for v in values {
        if !seen.insert(v) {
            return Err(source.bad(v, format!("{what} is given twice for {v}")));
        }
    }
    Ok(())
}

fn absolute_path(source: &Source<'_>, item: &str, path: &str) -> Result<String, ConfigError> {
    let ok = path.starts_with('/')
        && !path.split('/').any(|p| p == "..")
        && !path.chars().any(|c| c.is_control() || c == ':' || c == ',');
    if !ok {
        return Err(source.bad(item, format!("{path:?} is not an absolute path")));
    }
    Ok(path.to_owned())
}

/// `PATH:MIB[:opt,opt…]`.
fn parse_tmpfs(s: &Source<'_>, item: &str) -> Result<Tmpfs, ConfigError> {
    let mut parts = item.splitn(3, ':');
    let (path, size) = (parts.next().unwrap_or_default(), parts.next());
    let Some(size) = size else {
        return Err(s.bad(
            item,
            "expected PATH:MIB[:OPTIONS], e.g. /scratch:2048:noexec",
        ));
    };
    let size_mib = size
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1_048_576).contains(n))
        .ok_or_else(|| s.bad(item, "the size is a whole number of MiB, at least 1"))?;
    let mount_options: Vec<String> = match parts.next() {
        Some(opts) => opts.split(',').map(str::to_owned).collect(),
        None => Vec::new(),
    };
    for opt in &mount_options {
        let name = opt.split('=').next().unwrap_or_default();
        if !TMPFS_OPTIONS.contains(&name) {
            return Err(s.bad(item, format!("{opt:?} is not a tmpfs mount option")));
        }
    }
    Ok(Tmpfs {
        container_path: absolute_path(s, item, path)?,
        size_mib,
        mount_options,
    })
}

/// `HOST:CONTAINER[:ro]`.
fn parse_volume(s: &Source<'_>, item: &str) -> Result<HostVolume, ConfigError> {
    let parts: Vec<&str> = item.split(':').collect();
    let (host, container, read_only) = match parts[..] {
        [host, container] => (host, container, false),
        [host, container, "ro"] => (host, container, true),
        [host, container, "rw"] => (host, container, false),
        _ => return Err(s.bad(item, "expected HOST:CONTAINER[:ro], e.g. /data:/data:ro")),
    };
    Ok(HostVolume {
        host_path: absolute_path(s, item, host)?,
        container_path: absolute_path(s, item, container)?,
        read_only,
    })
}

/// `FS_ID[:PATH][,ap=fsap-…][,root=/dir][,iam][,ro]`.
fn parse_efs(s: &Source<'_>, item: &str) -> Result<EfsVolume, ConfigError> {
    let mut options = item.split(',');
    let head = options.next().unwrap_or_default();
    let (fs, path) = match head.split_once(':') {
        Some((fs, path)) => (fs, Some(path)),
        None => (head, None),
    };
    let fs_ok = fs
        .strip_prefix("fs-")
        .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()));
    if !fs_ok {
        return Err(s.bad(item, "expected an EFS file system id such as fs-0123abcd"));
    }
    let mut efs = EfsVolume {
        file_system_id: fs.to_owned(),
        container_path: match path {
            Some(p) => absolute_path(s, item, p)?,
            None => format!("/mnt/{fs}"),
        },
        root_directory: None,
        access_point_id: None,
        iam: false,
        read_only: false,
    };
    for option in options {
        match option.split_once('=') {
            Some(("ap", ap)) if ap.starts_with("fsap-") => efs.access_point_id = Some(ap.into()),
            Some(("root", root)) => efs.root_directory = Some(absolute_path(s, item, root)?),
            None if option == "iam" => efs.iam = true,
            None if option == "ro" => efs.read_only = true,
            _ => {
                return Err(s.bad(
                    item,
                    format!("unknown EFS option {option:?} (ap=fsap-…, root=/dir, iam, ro)"),
                ))
            }
        }
    }
    if efs.access_point_id.is_some() && efs.root_directory.is_some() {
        return Err(s.bad(
            item,
            "an access point sets its own root: give ap= or root=, not both",
        ));
    }
    Ok(efs)
}

/// `NAME=ARN` (Secrets Manager or SSM) or `NAME=PARAMETER` (an SSM parameter of the region).
fn parse_secret(s: &Source<'_>, item: &str) -> Result<Secret, ConfigError> {
    let Some((name, value_from)) = item.split_once('=') else {
        return Err(s.bad(item, "expected NAME=ARN"));
    };
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err(s.bad(item, "the name must be letters, digits and '_'"));
    }
    let from_ok = if value_from.starts_with("arn:") {
        let service = value_from.split(':').nth(2).unwrap_or_default();
        service == "secretsmanager" || service == "ssm"
    } else {
        !value_from.is_empty() && !value_from.contains(char::is_whitespace)
    };
    if !from_ok {
        return Err(s.bad(
            item,
            "expected a Secrets Manager or SSM parameter ARN (or an SSM parameter name)",
        ));
    }
    Ok(Secret {
        name: name.to_owned(),
        value_from: value_from.to_owned(),
    })
}

/// `NAME=SOFT[:HARD]`; the hard limit defaults to the soft one.
fn parse_ulimit(s: &Source<'_>, item: &str) -> Result<Ulimit, ConfigError> {
    let Some((name, limits)) = item.split_once('=') else {
        return Err(s.bad(item, "expected NAME=SOFT[:HARD], e.g. nofile=65536"));
    };
    if !ULIMIT_NAMES.contains(&name) {
        return Err(s.bad(
            item,
            format!("{name:?} is not a ulimit ({})", ULIMIT_NAMES.join(", ")),
        ));
    }
    let number = |t: &str| t.parse::<i32>().ok().filter(|n| *n >= 0);
    let (soft, hard) = match limits.split_once(':') {
        Some((soft, hard)) => (number(soft), number(hard)),
        None => (number(limits), number(limits)),
    };
    match (soft, hard) {
        (Some(soft), Some(hard)) if soft <= hard => Ok(Ulimit {
            name: name.to_owned(),
            soft,
            hard,
        }),
        (Some(_), Some(_)) => Err(s.bad(item, "the soft limit is above the hard one")),
        _ => Err(s.bad(item, "limits are whole numbers from 0 to 2147483647")),
    }
}

/// `NAME`, `UID` or `UID:GID`.
fn parse_user(s: &Source<'_>) -> Result<String, ConfigError> {
    let user = s.resolved.value.trim();
    let ok = !user.is_empty()
        && user.len() <= 255
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-:".contains(c));
    if !ok {
        return Err(s.bad(user, "expected a user name, UID or UID:GID"));
    }
    Ok(user.to_owned())
}

/// A CloudWatch log group name: 1-512 of `[.-_/#A-Za-z0-9]`.
fn parse_log_group(s: &Source<'_>) -> Result<String, ConfigError> {
    let group = s.resolved.value.trim();
    let ok = !group.is_empty()
        && group.len() <= 512
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/#".contains(c));
    if !ok {
        return Err(s.bad(group, "expected a CloudWatch log group name"));
    }
    Ok(group.to_owned())
}

/// `KEY=VALUE` (Metaflow's `KEY:VALUE` too) options of the awslogs driver.
fn parse_log_options(s: &Source<'_>) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut options = BTreeMap::new();
    for item in s.items()? {
        let split = item.split_once('=').or_else(|| item.split_once(':'));
        let Some((key, value)) = split.filter(|(k, _)| !k.is_empty()) else {
            return Err(s.bad(
                &item,
                "expected KEY=VALUE, e.g. awslogs-stream-prefix=train",
            ));
        };
        if key == "awslogs-group" {
            return Err(s.bad(&item, "give the group with --log-group"));
        }
        if options.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(s.bad(&item, format!("{key} is given twice")));
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{resolve, Sources};

    fn options(flags: &[(BatchKey, &str)]) -> Result<ContainerOptions, ConfigError> {
        let sources = Sources {
            flags: flags
                .iter()
                .map(|(k, v)| (Key::Batch(*k), (*v).to_owned()))
                .collect(),
            cwd: std::env::temp_dir(),
            ..Default::default()
        };
        ContainerOptions::from_settings(&resolve(&sources).unwrap())
    }

    #[test]
    fn every_option_parses() {
        let o = options(&[
            (BatchKey::SharedMemory, "512"),
            (BatchKey::Tmpfs, r#"["/b:10", "/a:20:noexec,size=20"]"#),
            (BatchKey::HostVolumes, "/data:/data:ro"),
            (BatchKey::EfsVolumes, r#"["fs-12ab:/models,ap=fsap-1,iam"]"#),
            (
                BatchKey::Secrets,
                "TOKEN=arn:aws:secretsmanager:us-east-1:1:secret:x",
            ),
            (BatchKey::Ulimits, r#"["nofile=1024:4096", "core=0"]"#),
            (BatchKey::Privileged, "true"),
            (BatchKey::ContainerUser, "1000:1000"),
            (BatchKey::LogOptions, "awslogs-stream-prefix:train"),
        ])
        .unwrap();
        assert_eq!(o.shared_memory_mib, Some(512));
        assert_eq!(o.tmpfs[0].container_path, "/a", "sorted by path");
        assert_eq!(o.ulimits[0].name, "core");
        assert_eq!(o.ulimits[1].hard, 4096);
        assert!(o.volumes[0].read_only);
        assert_eq!(o.efs[0].access_point_id.as_deref(), Some("fsap-1"));
        assert_eq!(o.log_options["awslogs-stream-prefix"], "train");
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (key, value) in [
            (BatchKey::SharedMemory, "0"),
            (BatchKey::Swappiness, "101"),
            (BatchKey::Tmpfs, "/x"),
            (BatchKey::Tmpfs, "rel:10"),
            (BatchKey::Tmpfs, "/x:10:bogus"),
            (BatchKey::HostVolumes, "/a"),
            (BatchKey::EfsVolumes, "vol-1"),
            (BatchKey::EfsVolumes, "fs-1,ap=fsap-1,root=/x"),
            (BatchKey::Secrets, "1X=arn:aws:ssm:r:1:parameter/x"),
            (BatchKey::Secrets, "X=arn:aws:s3:::bucket"),
            (BatchKey::Ulimits, "nofile=10:5"),
            (BatchKey::Ulimits, "files=10"),
            (BatchKey::EphemeralStorage, "20"),
            (BatchKey::Privileged, "sure"),
            (BatchKey::LogGroup, "bad group"),
            (BatchKey::Secrets, r#"["A=x", "A=y"]"#),
        ] {
            match options(&[(key, value)]) {
                Err(ConfigError::InvalidFlag { flag, .. }) => assert_eq!(flag, key.flag()),
                other => panic!("{key:?}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn platforms() {
        let o = options(&[(BatchKey::SharedMemory, "64")]).unwrap();
        assert!(o.check_platform(Platform::Ec2).is_none());
        assert_eq!(o.check_platform(Platform::Fargate).unwrap().0, "--shm");
        let o = options(&[(BatchKey::EphemeralStorage, "50")]).unwrap();
        assert!(o.check_platform(Platform::Fargate).is_none());
        assert_eq!(
            o.check_platform(Platform::Ec2).unwrap().0,
            "--ephemeral-storage"
        );
    }
}
