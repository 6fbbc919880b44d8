//! `mfbatch list` against the fake AWS: every status listed and paged, newest first, name and
//! status filters, `--mine` by the `mfbatch.user` tag, an array's children, JSON output.

mod support;

use serde_json::Value;
use support::cli::Cli;
use support::*;

fn project(fake: &FakeAws) -> Cli {
    let cli = Cli::new(fake);
    cli.write("step.py", "print('hi')\n");
    cli
}

/// The job ids in a table's rows (first column), top to bottom.
fn ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn lists_every_status_paged_newest_first() {
    let fake = FakeAws::start().await;
    let submitted = fake
        .submit_jobs((0..130).map(|_| Timeline::default()).collect())
        .await;
    let cli = project(&fake);
    let out = cli.run(&["list", "--limit", "500"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let listed = ids(&out.stdout);
    assert_eq!(listed.len(), 130);
    assert!(out.stdout.lines().next().unwrap().starts_with("JOB ID"));
    assert_eq!(listed.first(), submitted.last(), "newest first");
    let requests = fake.requests("ListJobs");
    let statuses: Vec<&str> = requests
        .iter()
        .filter(|b| b.get("nextToken").is_none())
        .map(|b| b["jobStatus"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.len(), 7, "one listing per status: {statuses:?}");
    assert!(
        requests.iter().any(|b| b.get("nextToken").is_some()),
        "130 jobs take two pages"
    );
    // The default limit.
    let out = cli.run(&["list"]);
    assert_eq!(ids(&out.stdout).len(), 50);
}

#[tokio::test]
async fn filters_by_name_status_and_user() {
    let fake = FakeAws::start().await;
    fake.submit_jobs(vec![Timeline::default(); 3]).await;
    let cli = project(&fake);
    for _ in 0..2 {
        let out = cli.run(&["run", "--detach", "step.py", "--name", "mine-step"]);
        assert_eq!(out.code, Some(0), "{}", out.render());
    }
    let before = fake.calls("ListJobs");
    let out = cli.run(&["list", "--name", "job1"]);
    assert_eq!(ids(&out.stdout).len(), 1, "{}", out.render());
    assert_eq!(fake.calls("ListJobs") - before, 1, "one filtered listing");
    let body = fake.requests("ListJobs").pop().unwrap();
    assert_eq!(body["filters"][0]["values"][0], "job1*");

    let out = cli.run(&["list", "--status", "running"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(ids(&out.stdout).is_empty());
    let out = cli.run(&["list", "--status", "BOGUS"]);
    assert_eq!(out.code, Some(2), "{}", out.render());

    let out = cli.run(&["list", "--mine", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let rows: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{}", out.render());
    assert!(rows.iter().all(|r| r["job_name"] == "mine-step"));
    assert_eq!(rows[0]["status"], "SUBMITTED");
}

#[tokio::test]
async fn lists_an_arrays_children_with_their_index() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let out = cli.run(&["run", "--detach", "step.py", "--array", "4"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let parent = out.stdout.trim().to_owned();
    let out = cli.run(&["list", "--array", &parent]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("INDEX  JOB ID"), "{}", out.render());
    let mut indexes: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, ["0", "1", "2", "3"]);
    assert!(lines[1..].iter().all(|l| l.contains(&format!("{parent}:"))));
    // The queue's listing shows the parent, not its children.
    let out = cli.run(&["list"]);
    assert_eq!(ids(&out.stdout), [parent]);
    assert!(out.stdout.contains("[array of 4]"), "{}", out.render());
}
