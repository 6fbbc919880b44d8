//! SubmitJob creates at most one job: the SDK never re-sends it; after an answer that may hide
//! a created job (a connection cut after the request reached Batch, a 500 after the job was
//! made) mfbatch looks for the job by name and `mfbatch.request-id` tag before sending again.

mod support;

use std::path::Path;

use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::launch::submit::REQUEST_ID_TAG;
use mfbatch::launch::{self, LaunchError, Submitted};
use mfbatch::spec::JobSpec;
use mfbatch::spec::RunOptions;
use support::flaky_proxy::FlakyProxy;
use support::*;

fn spec(root: &Path) -> JobSpec {
    write_file(root, "step.py", "print('hi')\n");
    test_spec(root, &[], RunOptions::default())
}

async fn launch_with(clients: &Clients, spec: JobSpec) -> Result<Submitted, LaunchError> {
    let events = mfbatch::event::discard();
    let prepared = launch::prepare(spec, &events).await?;
    let plan = launch::plan(clients, &prepared).await?;
    launch::execute(clients, &prepared, plan, &events).await
}

/// The one job, and that it carries the request id it was found by.
fn assert_one_job(fake: &FakeAws, submitted: &Submitted) {
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1, "exactly one job: {jobs:#?}");
    assert_eq!(jobs[0].id, submitted.job_id);
    let tag = jobs[0].submit["tags"][REQUEST_ID_TAG]
        .as_str()
        .unwrap_or("");
    assert_eq!(tag.len(), 32, "a random request id: {tag:?}");
}

#[tokio::test]
async fn a_connection_cut_after_submit_job_reached_batch_leaves_one_job() {
    let fake = FakeAws::start().await;
    let proxy = FlakyProxy::drop_matching(&fake.uri(), "/v1/submitjob", 1).await;
    let clients = Clients::from_sdk_config(
        &FakeAws::sdk_config_unpooled(&proxy.uri()),
        &ClientOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let submitted = launch_with(&clients, spec(dir.path()))
        .await
        .expect("the job is found");
    assert_eq!(proxy.dropped(), 1, "the SubmitJob connection was cut");
    assert_eq!(fake.calls("SubmitJob"), 1, "not sent again: it was found");
    assert!(fake.calls("ListJobs") >= 1);
    assert_one_job(&fake, &submitted);
}

#[tokio::test]
async fn a_500_after_the_job_was_created_leaves_one_job() {
    let fake = FakeAws::start().await;
    fake.fail_next("SubmitJob", 1, Fault::ServerErrorAfterEffect);
    let dir = tempfile::tempdir().unwrap();
    let submitted = launch_with(&fake.clients(), spec(dir.path()))
        .await
        .expect("the job is found");
    assert_eq!(fake.calls("SubmitJob"), 1);
    assert_one_job(&fake, &submitted);
}

#[tokio::test]
async fn a_500_that_created_nothing_is_sent_again_once_the_job_is_not_found() {
    let fake = FakeAws::start().await;
    fake.fail_next("SubmitJob", 1, Fault::ServerError);
    let dir = tempfile::tempdir().unwrap();
    let submitted = launch_with(&fake.clients(), spec(dir.path()))
        .await
        .expect("sent again");
    assert_eq!(fake.calls("SubmitJob"), 2);
    // Looked (with the settle window) before sending again.
    assert!(fake.calls("ListJobs") >= 2, "{}", fake.calls("ListJobs"));
    assert_one_job(&fake, &submitted);
}

#[tokio::test]
async fn throttling_is_sent_again_without_looking() {
    let fake = FakeAws::start().await;
    fake.fail_next("SubmitJob", 2, Fault::Throttle);
    let dir = tempfile::tempdir().unwrap();
    let submitted = launch_with(&fake.clients(), spec(dir.path()))
        .await
        .expect("sent again");
    assert_eq!(fake.calls("SubmitJob"), 3);
    assert_eq!(fake.calls("ListJobs"), 0);
    assert_one_job(&fake, &submitted);
}

#[tokio::test]
async fn every_launch_has_its_own_request_id() {
    let fake = FakeAws::start().await;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        launch_with(&fake.clients(), spec(dir.path()))
            .await
            .unwrap();
    }
    let ids: Vec<String> = fake
        .jobs()
        .iter()
        .map(|j| {
            j.submit["tags"][REQUEST_ID_TAG]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}
