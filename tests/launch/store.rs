//! Storing the package: multipart uploads and their failures, encryption, HeadObject answers,
//! and the S3 endpoint the job is given.

use super::*;

#[tokio::test]
async fn a_package_over_16_mib_goes_up_in_parts() {
    let fake = FakeAws::start().await;
    let dir = project();
    // Incompressible, so the .tgz stays over the threshold: 8 MiB + 8 MiB + the rest.
    write_file(dir.path(), "data/weights_a.py", incompressible(9 << 20, 1));
    write_file(dir.path(), "data/weights_b.py", incompressible(8 << 20, 2));
    let (result, events) = launch(&fake, spec(dir.path())).await;
    let submitted = result.expect("the launch succeeds");

    assert_eq!(fake.calls("PutObject"), 0);
    assert_eq!(fake.calls("CreateMultipartUpload"), 1);
    assert_eq!(fake.calls("UploadPart"), 3);
    assert_eq!(fake.calls("CompleteMultipartUpload"), 1);
    assert_eq!(fake.calls("AbortMultipartUpload"), 0);
    assert_eq!(fake.open_uploads(), 0);
    let parts: Vec<String> = fake
        .requests("UploadPart")
        .iter()
        .map(|r| r["query"]["partNumber"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(parts, ["1", "2", "3"]);

    let object = fake
        .object(BUCKET, key_of(&submitted.package_url))
        .expect("assembled");
    let sha = submitted
        .package_url
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".tgz")
        .to_owned();
    assert_eq!(
        sha256_hex(&object),
        sha,
        "the parts reassemble to the hashed package"
    );
    assert!(object.len() > 16 << 20);

    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::UploadProgress { sent, total } => Some((*sent, *total)),
            _ => None,
        })
        .collect();
    let total = object.len() as u64;
    assert_eq!(
        progress,
        [(8 << 20, total), (16 << 20, total), (total, total)]
    );
}

#[tokio::test]
async fn a_failed_part_aborts_the_upload_and_submits_nothing() {
    let fake = FakeAws::start().await;
    let dir = project();
    write_file(dir.path(), "big.py", incompressible(17 << 20, 3));
    fake.fail_always("UploadPart", Fault::AccessDenied);
    let (result, _) = launch(&fake, spec(dir.path())).await;
    match result.unwrap_err() {
        LaunchError::Store(StoreError::Aws(e)) => {
            assert_eq!((e.call, e.kind), ("UploadPart", AwsErrorKind::AccessDenied));
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert_eq!(fake.calls("AbortMultipartUpload"), 1);
    assert_eq!(fake.open_uploads(), 0, "no orphaned parts left behind");
    assert_eq!(fake.calls("SubmitJob"), 0);
    assert!(fake.object_keys(BUCKET).is_empty());
}

#[tokio::test]
async fn uploads_ask_for_the_configured_server_side_encryption() {
    let fake = FakeAws::start().await;
    let dir = project();
    let env = [("METAFLOW_S3_SERVER_SIDE_ENCRYPTION", Some("aws:kms"))];
    let (result, _) = launch(&fake, test_spec(dir.path(), &env, RunOptions::default())).await;
    result.unwrap();
    let put = fake
        .call_log()
        .into_iter()
        .find(|c| c.op == "PutObject")
        .expect("an upload");
    assert_eq!(put.body["server_side_encryption"], "aws:kms");
    assert_eq!(put.body["if_none_match"], "*", "upload only if absent");

    // An unknown mode is a usage error before anything happens.
    let sources = test_sources(
        dir.path(),
        &[("METAFLOW_S3_SERVER_SIDE_ENCRYPTION", Some("rot13"))],
    );
    let options = RunOptions {
        script: dir.path().join("step.py"),
        ..Default::default()
    };
    let err = build_spec(&resolve(&sources).unwrap(), &options).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::InvalidSetting {
                key: "METAFLOW_S3_SERVER_SIDE_ENCRYPTION",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_s3_endpoint_of_the_upload_is_given_to_the_job() {
    let fake = FakeAws::start().await;
    let dir = project();
    // The fake's clients have their endpoint from the SDK configuration (as AWS_ENDPOINT_URL
    // gives it), not from METAFLOW_S3_ENDPOINT_URL.
    let (result, _) = launch(&fake, spec(dir.path())).await;
    result.unwrap();
    let env = environment(&fake.requests("SubmitJob")[0]);
    assert_eq!(env["METAFLOW_S3_ENDPOINT_URL"], fake.uri());

    // A METAFLOW_S3_ENDPOINT_URL the user chose (setting or --env) is kept, once.
    let endpoints = |submit: &Value| -> Vec<String> {
        name_values(&submit["containerOverrides"]["environment"])
            .into_iter()
            .filter(|(n, _)| n == "METAFLOW_S3_ENDPOINT_URL")
            .map(|(_, v)| v)
            .collect()
    };
    let own = [(
        "METAFLOW_S3_ENDPOINT_URL",
        Some("http://own.example.com:9000"),
    )];
    let (result, _) = launch(&fake, test_spec(dir.path(), &own, RunOptions::default())).await;
    result.unwrap();
    let submit = fake.requests("SubmitJob").pop().unwrap();
    assert_eq!(endpoints(&submit), ["http://own.example.com:9000"]);
    let options = RunOptions {
        env: vec!["METAFLOW_S3_ENDPOINT_URL=http://from-env-flag:9000".into()],
        ..Default::default()
    };
    let (result, _) = launch(&fake, test_spec(dir.path(), &[], options)).await;
    result.unwrap();
    let submit = fake.requests("SubmitJob").pop().unwrap();
    assert_eq!(endpoints(&submit), ["http://from-env-flag:9000"]);
}

#[tokio::test]
async fn a_forbidden_head_object_means_unknown_and_the_conditional_put_decides() {
    let fake = FakeAws::start().await;
    // Without s3:ListBucket, HeadObject on a missing key answers 403.
    fake.fail_always("HeadObject", Fault::AccessDenied);
    let dir = project();
    let clients = fake.clients();
    let prepared = launch::prepare(spec(dir.path()), &mfbatch::event::discard())
        .await
        .unwrap();
    let plan = launch::plan(&clients, &prepared)
        .await
        .expect("not an error");
    assert!(!plan.package_present);
    let warning = format!("{:?}", plan.warnings);
    assert!(warning.contains("s3:ListBucket"), "{warning}");
    launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    assert_eq!(fake.calls("PutObject"), 1);
    assert_eq!(fake.object_keys(BUCKET).len(), 1);

    // Already stored: the conditional put answers 412, which is success.
    let plan = launch::plan(&clients, &prepared).await.unwrap();
    launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    assert_eq!(fake.calls("PutObject"), 2);
    assert_eq!(fake.jobs().len(), 2);
}

#[tokio::test]
async fn a_multipart_upload_abandoned_mid_way_is_aborted() {
    use mfbatch::launch::store::{PackageStore, S3Store};
    let fake = FakeAws::start().await;
    let dir = project();
    write_file(dir.path(), "big.py", incompressible(17 << 20, 4));
    let prepared = launch::prepare(spec(dir.path()), &mfbatch::event::discard())
        .await
        .unwrap();
    let store = S3Store::new(
        fake.clients().s3.clone(),
        mfbatch::s3url::S3Url::parse(SYSROOT).unwrap(),
    );
    let first_part = Arc::new(tokio::sync::Notify::new());
    let progress = {
        let first_part = first_part.clone();
        move |_, _| first_part.notify_one()
    };
    // An interrupt after the first part: the upload's future is dropped mid-way.
    tokio::select! {
        result = store.put(&prepared.package, &progress) => panic!("finished: {result:?}"),
        _ = first_part.notified() => {}
    }
    mfbatch::launch::store::abort_abandoned_uploads(std::time::Duration::from_secs(10)).await;
    assert_eq!(fake.calls("CreateMultipartUpload"), 1);
    assert_eq!(fake.calls("CompleteMultipartUpload"), 0);
    assert_eq!(fake.calls("AbortMultipartUpload"), 1);
    assert_eq!(fake.open_uploads(), 0, "no parts are left to be billed");
}

#[tokio::test]
async fn an_answer_without_an_upload_id_is_an_error_not_an_empty_id() {
    let fake = FakeAws::start().await;
    // A 200 whose body holds no UploadId.
    fake.fail_always(
        "CreateMultipartUpload",
        Fault::Raw {
            status: 200,
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult><Bucket>{BUCKET}</Bucket><Key>k</Key></InitiateMultipartUploadResult>"
            ),
        },
    );
    let dir = project();
    write_file(dir.path(), "big.py", incompressible(17 << 20, 5));
    let (result, _) = launch(&fake, spec(dir.path())).await;
    match result.unwrap_err() {
        LaunchError::Store(StoreError::Aws(e)) => {
            assert_eq!(e.call, "CreateMultipartUpload");
            assert!(format!("{e:?}").contains("UploadId"), "{e:?}");
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert_eq!(
        fake.calls("UploadPart"),
        0,
        "no part is sent with an empty id"
    );
    assert_eq!(fake.calls("SubmitJob"), 0);
}
