//! A stack's outputs as Metaflow settings: the names of mfbatch's template, which are also those of
//! Metaflow's own (metaflow-tools) template, so a stack built from either fills the same keys.

use std::collections::BTreeMap;

/// One output that fills a setting.
#[derive(Debug, Clone, Copy)]
pub struct OutputSetting {
    pub output: &'static str,
    pub key: &'static str,
    /// Without it, the stack is not one mfbatch can run on.
    pub required: bool,
}

/// Every output mfbatch reads, with the setting it fills.
pub const OUTPUT_SETTINGS: [OutputSetting; 10] = [
    req("MetaflowDataStoreS3Url", "METAFLOW_DATASTORE_SYSROOT_S3"),
    req("MetaflowDataToolsS3Url", "METAFLOW_DATATOOLS_S3ROOT"),
    req("BatchJobQueueArn", "METAFLOW_BATCH_JOB_QUEUE"),
    req("ECSJobRoleForBatchJobs", "METAFLOW_ECS_S3_ACCESS_IAM_ROLE"),
    opt(
        "ECSFargateExecutionRoleArn",
        "METAFLOW_ECS_FARGATE_EXECUTION_ROLE",
    ),
    // Outputs of metaflow-tools' template, for users who deployed that one.
    opt("ServiceUrl", "METAFLOW_SERVICE_URL"),
    opt("InternalServiceUrl", "METAFLOW_SERVICE_INTERNAL_URL"),
    opt("StepFunctionsRoleArn", "METAFLOW_SFN_IAM_ROLE"),
    opt("EventBridgeRoleArn", "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE"),
    opt("DDBTableName", "METAFLOW_SFN_DYNAMO_DB_TABLE"),
];

const fn req(output: &'static str, key: &'static str) -> OutputSetting {
    OutputSetting {
        output,
        key,
        required: true,
    }
}

const fn opt(output: &'static str, key: &'static str) -> OutputSetting {
    OutputSetting {
        output,
        key,
        required: false,
    }
}

/// The settings a stack's outputs fill, or the required outputs it lacks.
///
/// Also sets what `metaflow configure aws` sets alongside: `METAFLOW_DEFAULT_DATASTORE=s3`, and
/// `METAFLOW_DEFAULT_METADATA=service` when the stack has a metadata service.
pub fn settings_from_outputs(
    outputs: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Vec<&'static str>> {
    let mut settings = BTreeMap::new();
    let mut missing = Vec::new();
    for entry in OUTPUT_SETTINGS {
        match outputs.get(entry.output).filter(|v| !v.trim().is_empty()) {
            Some(value) => {
                settings.insert(entry.key.to_owned(), value.trim().to_owned());
            }
            None if entry.required => missing.push(entry.output),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    settings.insert("METAFLOW_DEFAULT_DATASTORE".into(), "s3".into());
    if settings.contains_key("METAFLOW_SERVICE_URL") {
        settings.insert("METAFLOW_DEFAULT_METADATA".into(), "service".into());
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn outputs_fill_metaflow_keys() {
        let outputs = map(&[
            ("MetaflowDataStoreS3Url", "s3://b/metaflow"),
            ("MetaflowDataToolsS3Url", "s3://b/data"),
            ("BatchJobQueueArn", "arn:q"),
            ("ECSJobRoleForBatchJobs", "arn:role"),
            ("MetaflowS3BucketName", "b"),
            ("ECSFargateExecutionRoleArn", ""),
        ]);
        let settings = settings_from_outputs(&outputs).unwrap();
        assert_eq!(
            settings,
            map(&[
                ("METAFLOW_BATCH_JOB_QUEUE", "arn:q"),
                ("METAFLOW_DATASTORE_SYSROOT_S3", "s3://b/metaflow"),
                ("METAFLOW_DATATOOLS_S3ROOT", "s3://b/data"),
                ("METAFLOW_DEFAULT_DATASTORE", "s3"),
                ("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", "arn:role"),
            ])
        );
    }

    #[test]
    fn a_service_url_sets_the_metadata_mode_and_missing_outputs_are_named() {
        let mut outputs = map(&[
            ("MetaflowDataStoreS3Url", "s3://b/metaflow"),
            ("MetaflowDataToolsS3Url", "s3://b/data"),
            ("BatchJobQueueArn", "arn:q"),
            ("ECSJobRoleForBatchJobs", "arn:role"),
            ("ServiceUrl", "https://x/api/"),
        ]);
        let settings = settings_from_outputs(&outputs).unwrap();
        assert_eq!(settings["METAFLOW_DEFAULT_METADATA"], "service");
        outputs.remove("BatchJobQueueArn");
        outputs.remove("ECSJobRoleForBatchJobs");
        assert_eq!(
            settings_from_outputs(&outputs).unwrap_err(),
            ["BatchJobQueueArn", "ECSJobRoleForBatchJobs"]
        );
    }
}
