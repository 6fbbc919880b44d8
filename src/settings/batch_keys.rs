//! The settings of the container options and scheduling flags of `mfbatch run`: each settable by
//! its flag, a variable or a config file, resolved by the one precedence function like every
//! other key.
//!
//! Names follow `@batch`'s parameter (`METAFLOW_BATCH_<PARAMETER>`) where Metaflow has one, so a
//! profile reads the way a Metaflow user thinks; the rest are mfbatch's own (`MFBATCH_*`). Options
//! given several times (`--volume`, `--secret`, …) are a JSON array of strings in a variable or
//! file (a plain string is one item); a flag given several times replaces the setting, it does
//! not add to it.

/// A container or scheduling option of `mfbatch run` that may also be a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BatchKey {
    SharedMemory,
    Tmpfs,
    MaxSwap,
    Swappiness,
    HostVolumes,
    EfsVolumes,
    Secrets,
    Ulimits,
    Privileged,
    Init,
    ContainerUser,
    Neuron,
    EphemeralStorage,
    LogGroup,
    LogOptions,
    Priority,
    Share,
}

impl BatchKey {
    /// Every key, in the order `mfbatch config` shows them.
    pub const ALL: [BatchKey; 17] = [
        BatchKey::SharedMemory,
        BatchKey::Tmpfs,
        BatchKey::MaxSwap,
        BatchKey::Swappiness,
        BatchKey::HostVolumes,
        BatchKey::EfsVolumes,
        BatchKey::Secrets,
        BatchKey::Ulimits,
        BatchKey::Privileged,
        BatchKey::Init,
        BatchKey::ContainerUser,
        BatchKey::Neuron,
        BatchKey::EphemeralStorage,
        BatchKey::LogGroup,
        BatchKey::LogOptions,
        BatchKey::Priority,
        BatchKey::Share,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BatchKey::SharedMemory => "METAFLOW_BATCH_SHARED_MEMORY",
            BatchKey::Tmpfs => "MFBATCH_TMPFS",
            BatchKey::MaxSwap => "METAFLOW_BATCH_MAX_SWAP",
            BatchKey::Swappiness => "METAFLOW_BATCH_SWAPPINESS",
            BatchKey::HostVolumes => "METAFLOW_BATCH_HOST_VOLUMES",
            BatchKey::EfsVolumes => "METAFLOW_BATCH_EFS_VOLUMES",
            BatchKey::Secrets => "MFBATCH_SECRETS",
            BatchKey::Ulimits => "MFBATCH_ULIMITS",
            BatchKey::Privileged => "METAFLOW_BATCH_PRIVILEGED",
            BatchKey::Init => "MFBATCH_INIT",
            BatchKey::ContainerUser => "MFBATCH_CONTAINER_USER",
            BatchKey::Neuron => "METAFLOW_BATCH_INFERENTIA",
            BatchKey::EphemeralStorage => "METAFLOW_BATCH_EPHEMERAL_STORAGE",
            BatchKey::LogGroup => "MFBATCH_LOG_GROUP",
            BatchKey::LogOptions => "METAFLOW_BATCH_LOG_OPTIONS",
            BatchKey::Priority => "MFBATCH_PRIORITY",
            BatchKey::Share => "MFBATCH_SHARE",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            BatchKey::SharedMemory => "--shm",
            BatchKey::Tmpfs => "--tmpfs",
            BatchKey::MaxSwap => "--max-swap",
            BatchKey::Swappiness => "--swappiness",
            BatchKey::HostVolumes => "--volume",
            BatchKey::EfsVolumes => "--efs",
            BatchKey::Secrets => "--secret",
            BatchKey::Ulimits => "--ulimit",
            BatchKey::Privileged => "--privileged",
            BatchKey::Init => "--init",
            BatchKey::ContainerUser => "--user",
            BatchKey::Neuron => "--neuron",
            BatchKey::EphemeralStorage => "--ephemeral-storage",
            BatchKey::LogGroup => "--log-group",
            BatchKey::LogOptions => "--log-option",
            BatchKey::Priority => "--priority",
            BatchKey::Share => "--share",
        }
    }

    /// Whether the setting is a list (its flag may be given several times).
    pub fn is_list(self) -> bool {
        matches!(
            self,
            BatchKey::Tmpfs
                | BatchKey::HostVolumes
                | BatchKey::EfsVolumes
                | BatchKey::Secrets
                | BatchKey::Ulimits
                | BatchKey::LogOptions
        )
    }
}

/// A list setting's items: a JSON array of strings, or one plain string.
pub fn list_items(value: &str) -> Result<Vec<String>, String> {
    let trimmed = value.trim();
    if !trimmed.starts_with('[') {
        return Ok(vec![trimmed.to_owned()]);
    }
    let items: Vec<serde_json::Value> =
        serde_json::from_str(trimmed).map_err(|e| format!("not a JSON array of strings: {e}"))?;
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            other => Err(format!("{other} is not a string")),
        })
        .collect()
}

/// The text a list flag given several times becomes as a setting.
pub fn list_value(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

/// `true`/`false` (and `1`/`0`, `yes`/`no`) as Metaflow's boolean settings take them.
pub fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_json_arrays_or_one_item() {
        assert_eq!(list_items("/a:/b").unwrap(), ["/a:/b"]);
        assert_eq!(list_items(r#"["a", "b"]"#).unwrap(), ["a", "b"]);
        assert!(list_items("[1]").is_err());
        assert_eq!(
            list_items(&list_value(&["x,y".into(), "z".into()])).unwrap(),
            ["x,y", "z"]
        );
        assert_eq!(boolean("TRUE"), Some(true));
        assert_eq!(boolean("maybe"), None);
    }
}
