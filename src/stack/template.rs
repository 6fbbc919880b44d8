//! The CloudFormation template shipped with mfbatch (`stack/mfbatch.yaml`), embedded so the binary
//! alone can print and deploy it, and the names of its parameters for checking `--param` early.

/// The template's text, exactly as in `stack/mfbatch.yaml`.
pub const TEMPLATE: &str = include_str!("../../stack/mfbatch.yaml");

/// The parameters the template declares, in its order.
///
/// Read from the template's own `Parameters:` section (top-level keys two spaces in), so a
/// parameter added to the YAML is known here without a second list to keep in step.
pub fn parameter_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in TEMPLATE.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.trim().is_empty() {
            inside = line.trim_end() == "Parameters:";
            continue;
        }
        if !inside {
            continue;
        }
        let Some(rest) = line.strip_prefix("  ") else {
            continue;
        };
        if rest.starts_with([' ', '#']) {
            continue;
        }
        if let Some(name) = rest.trim_end().strip_suffix(':') {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) {
                names.push(name);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_from_the_template() {
        let names = parameter_names();
        for expected in [
            "BucketName",
            "ComputeType",
            "MinVCpus",
            "MaxVCpus",
            "InstanceTypes",
            "EnableFargate",
            "FargateComputeType",
            "VpcId",
            "SubnetIds",
        ] {
            assert!(names.contains(&expected), "{expected} not in {names:?}");
        }
        // Nothing from other sections (Conditions, Resources, Outputs).
        assert!(!names.contains(&"MetaflowS3Bucket"), "{names:?}");
        assert!(!names.contains(&"MetaflowDataStoreS3Url"), "{names:?}");
    }
}
