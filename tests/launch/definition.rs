//! Job definitions: a revision not yet visible to SubmitJob, and look-alikes that must not be
//! reused.

use super::*;

#[tokio::test]
async fn a_definition_not_yet_visible_to_submit_job_is_waited_for() {
    let fake = FakeAws::start().await;
    let dir = project();
    let not_found = Fault::Custom {
        status: 400,
        code: "ClientException".into(),
        message: "Job definition mfbatch-x:1 not found".into(),
    };
    fake.fail_next("SubmitJob", 1, not_found.clone());
    let (result, _) = launch(&fake, spec(dir.path())).await;
    result.expect("submitted on the second try");
    assert_eq!(fake.calls("SubmitJob"), 2);
    assert_eq!(fake.jobs().len(), 1);

    // A reused definition gets no such patience: the error is the user's to see.
    fake.fail_next("SubmitJob", 1, not_found);
    let (result, _) = launch(&fake, spec(dir.path())).await;
    let err = result.expect_err("not retried");
    assert!(
        matches!(err, LaunchError::Aws(ref e) if e.code.as_deref() == Some("ClientException")),
        "{err:?}"
    );
    assert_eq!(fake.calls("SubmitJob"), 3);
}

/// Registers a revision under `name` as someone else in the account could: the definition
/// mfbatch would register, changed by `tamper`.
async fn register_lookalike(
    fake: &FakeAws,
    def: &mfbatch::launch::jobdef::JobDefinition,
    tamper: impl FnOnce(
        aws_sdk_batch::types::builders::ContainerPropertiesBuilder,
    ) -> aws_sdk_batch::types::builders::ContainerPropertiesBuilder,
) -> String {
    use aws_sdk_batch::types::{
        ContainerProperties, JobDefinitionType, KeyValuePair, PlatformCapability,
        ResourceRequirement, ResourceType,
    };
    let p = &def.container_properties;
    let mut props = ContainerProperties::builder()
        .image(&p.image)
        .job_role_arn(&p.job_role_arn)
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
    let out = fake
        .clients()
        .batch
        .register_job_definition()
        .job_definition_name(&def.job_definition_name)
        .r#type(JobDefinitionType::Container)
        .container_properties(tamper(props).build())
        .platform_capabilities(PlatformCapability::Ec2)
        .propagate_tags(true)
        .send()
        .await
        .unwrap();
    out.job_definition_arn().unwrap().to_owned()
}

#[tokio::test]
async fn a_revision_with_our_name_but_other_content_is_not_reused() {
    use aws_sdk_batch::types::{MountPoint, Volume};
    let fake = FakeAws::start().await;
    let dir = project();
    let clients = fake.clients();
    let prepared = launch::prepare(spec(dir.path()), &mfbatch::event::discard())
        .await
        .unwrap();
    let def = launch::plan(&clients, &prepared)
        .await
        .unwrap()
        .job_definition;

    // Someone registers look-alikes: another image, and the same content plus a host volume.
    register_lookalike(&fake, &def, |p| p.image("evil/image:latest")).await;
    register_lookalike(&fake, &def, |p| {
        p.volumes(
            Volume::builder()
                .name("host")
                .host(
                    aws_sdk_batch::types::Host::builder()
                        .source_path("/")
                        .build(),
                )
                .build(),
        )
        .mount_points(
            MountPoint::builder()
                .source_volume("host")
                .container_path("/host")
                .build(),
        )
    })
    .await;
    let plan = launch::plan(&clients, &prepared).await.unwrap();
    assert!(
        plan.existing_definition.is_none(),
        "{:?}",
        plan.existing_definition
    );
    let submitted = launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    assert!(submitted.job_definition.newly_registered);
    assert_eq!(submitted.job_definition.revision, 3);
    assert_eq!(fake.jobs()[0].definition, submitted.job_definition.arn);

    // A newer look-alike does not hide the matching revision, which is reused.
    register_lookalike(&fake, &def, |p| p.command("sh")).await;
    let plan = launch::plan(&clients, &prepared).await.unwrap();
    let reused = plan
        .existing_definition
        .clone()
        .expect("the matching revision");
    assert_eq!(reused.revision, 3);
    launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    assert_eq!(fake.calls("RegisterJobDefinition"), 1 + 3);
    assert_eq!(fake.jobs()[1].definition, reused.arn);
}
