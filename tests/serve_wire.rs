//! `mfbatch serve --stdio` at the wire, against the fake AWS: bad input, one job per key (also
//! across SIGKILL and restart), resume from a cursor, and the end of input / shutdown modes.

#[path = "serve/client.rs"]
#[allow(dead_code)]
mod client;
mod support;

use std::time::Duration;

use client::{of, Machine};
use serde_json::{json, Value};
use support::{FakeAws, JobStatus, Timeline};

const WAIT: Duration = Duration::from_secs(60);

fn lines_job(lines: &[&str], running: usize) -> Timeline {
    Timeline::new()
        .status(JobStatus::Submitted, 1)
        .running(running)
        .logs(lines)
        .succeeded()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_get_errors_and_the_daemon_serves_on() {
    let fake = FakeAws::start().await;
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    let before = serve.call("ping", json!({})).await;
    assert_eq!(before["error"]["code"], -32002, "{before}");
    serve.hello(json!({})).await;
    let big = format!("{{\"x\":\"{}\"}}\n", "a".repeat(2 * 1024 * 1024));
    let cases: Vec<(Vec<u8>, i64)> = vec![
        (b"{bad\n".to_vec(), -32700),
        (b"[]\n".to_vec(), -32600),
        (b"{}\n".to_vec(), -32600),
        (b"\xff\xfe\n".to_vec(), -32700),
        (big.into_bytes(), -32600),
        (br#"{"jsonrpc":"2.0","id":"u","method":"nope"}"#.to_vec(), -32601),
        (br#"{"jsonrpc":"2.0","id":"p","method":"follow","params":{"job_id":3}}"#.to_vec(), -32602),
        (br#"{"jsonrpc":"2.0","id":"m","method":"launch","params":{"key":"k","script":"step.py","memory":"-5"}}"#.to_vec(), 1),
    ];
    for (line, code) in cases {
        let mut line = line;
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        serve.send_raw(&line).await;
        let answer = loop {
            let line = serve.next(WAIT).await.expect("an answer");
            if line.get("id").is_some() {
                break line;
            }
        };
        assert_eq!(answer["error"]["code"], code, "{answer}");
        if code == 1 {
            assert_eq!(answer["error"]["data"]["field"], "--memory");
            assert!(answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--memory"));
        }
    }
    serve.send_raw(b"\n").await;
    let wrong = serve.call("hello", json!({"protocols": [99]})).await;
    assert_eq!(wrong["error"]["data"]["supported"], json!([1]));
    let ping = serve.call("ping", json!({})).await;
    assert!(ping["result"]["t"].is_i64(), "{ping}");
    assert_eq!(fake.mutating_calls(), Vec::<String>::new());
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_per_key_and_a_conflicting_key_is_an_error() {
    let fake = FakeAws::start().await;
    fake.set_default_timeline(lines_job(&["one", "two"], 2));
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    let launch = json!({"key": "flow/1/train/1/a0", "script": machine.script(), "cpu": "2"});
    let first = serve.send("launch", launch.clone()).await;
    let second = serve.send("launch", launch.clone()).await;
    let (a, b) = (serve.answer(first).await, serve.answer(second).await);
    let fresh = [&a, &b]
        .iter()
        .filter(|x| x["result"]["deduplicated"] == false)
        .count();
    assert_eq!(fresh, 1, "one launch, one deduplicated: {a} {b}");
    let mut other = launch.clone();
    other["cpu"] = json!("4");
    let conflict = serve.call("launch", other).await;
    assert_eq!(conflict["error"]["code"], 2, "{conflict}");
    serve
        .until(WAIT, |e| of(e, "flow/1/train/1/a0", "exited").len() == 1)
        .await;
    let submitted: Vec<Value> = of(&serve.events, "flow/1/train/1/a0", "submitted")
        .into_iter()
        .cloned()
        .collect();
    assert!(submitted
        .iter()
        .all(|s| s["job_id"] == submitted[0]["job_id"]));
    // The key after the end: the same job, no second SubmitJob.
    let mut no_follow = launch.clone();
    no_follow["follow"] = json!(false);
    let again = serve.call("launch", no_follow).await;
    assert_eq!(again["result"]["job_id"], submitted[0]["job_id"], "{again}");
    assert_eq!(fake.calls("SubmitJob"), 1);
    let job = &fake.jobs()[0];
    assert!(
        job.name.ends_with(&sha_prefix("flow/1/train/1/a0")),
        "{}",
        job.name
    );
    assert_eq!(job.submit["tags"]["mfbatch.key"], "flow/1/train/1/a0");
    // Order per job: submitted, then lines, then exited last, with the line count.
    let mine: Vec<&Value> = serve
        .events
        .iter()
        .filter(|e| e["job_id"] == submitted[0]["job_id"])
        .collect();
    assert_eq!(mine.last().unwrap()["event"], "exited");
    let seqs: Vec<u64> = serve
        .events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gaps: {seqs:?}"
    );
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

fn sha_prefix(key: &str) -> String {
    support::sha256_hex(key.as_bytes())[..12].to_owned()
}

fn lines_of(events: &[Value], key: &str) -> Vec<String> {
    of(events, key, "log")
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_launch_then_replay_makes_exactly_one_job_per_key() {
    let fake = FakeAws::start().await;
    // Some SubmitJob answers are lost after the job was made: the worst case for a resend.
    fake.set_random_faults(0.0, 0.0, &[]);
    let machine = Machine::new(&fake);
    let keys: Vec<String> = (0..40).map(|i| format!("flow/7/step/{i}/a0")).collect();
    let launch = |key: &str| json!({"key": key, "script": machine.script(), "follow": false});
    for round in 0..3 {
        let mut serve = machine.start(&["--submit-rate", "20"]);
        serve.hello(json!({})).await;
        if round == 1 {
            fake.fail_next("SubmitJob", 3, support::Fault::ServerErrorAfterEffect);
        }
        for key in &keys {
            serve.send("launch", launch(key)).await;
        }
        // Kill at a different point of the launches each round.
        let target = [5, 17, 29][round];
        let deadline = tokio::time::Instant::now() + WAIT;
        while fake.calls("SubmitJob") < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        serve.sigkill();
        let _ = serve.child.wait().await;
    }
    let mut serve = machine.start(&[]);
    let hello = serve.hello(json!({})).await;
    assert!(
        !hello["recovered"].as_array().unwrap().is_empty(),
        "{hello}"
    );
    let mut ids = Vec::new();
    for key in &keys {
        ids.push(serve.send("launch", launch(key)).await);
    }
    for id in ids {
        let answer = serve.answer(id).await;
        assert!(answer.get("result").is_some(), "{answer}");
    }
    serve
        .until(WAIT, |e| {
            e.iter().filter(|e| e["event"] == "submitted").count()
                >= keys.len() - count_known(&hello, &keys)
        })
        .await;
    let jobs = fake.jobs();
    let mut names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        jobs.len(),
        keys.len(),
        "one job per key (SubmitJob calls: {})",
        fake.calls("SubmitJob")
    );
    assert_eq!(names.len(), keys.len());
    // A status on each, and nothing left that was never submitted.
    let status = serve.call("status", json!({})).await;
    let known = status["result"]["jobs"].as_array().unwrap();
    assert_eq!(
        known.iter().filter(|j| j["job_id"].is_string()).count(),
        keys.len()
    );
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

fn count_known(hello: &Value, keys: &[String]) -> usize {
    hello["recovered"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["job_id"].is_string() && keys.iter().any(|k| r["key"] == json!(k)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_resumes_logs_from_the_cursor() {
    let fake = FakeAws::start().await;
    let lines = client::thirty_lines_text();
    fake.set_default_timeline(client::thirty_lines(40, 6));
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    serve
        .call("launch", json!({"key": "k", "script": machine.script()}))
        .await;
    serve.until(WAIT, |e| of(e, "k", "log").len() >= 4).await;
    let seen = lines_of(&serve.events, "k");
    let cursor = of(&serve.events, "k", "log").last().unwrap()["cursor"].clone();
    let job_id = of(&serve.events, "k", "submitted")[0]["job_id"].clone();
    serve.sigkill();
    let _ = serve.child.wait().await;

    let mut serve = machine.start(&[]);
    let hello = serve.hello(json!({})).await;
    assert_eq!(hello["recovered"][0]["job_id"], job_id, "{hello}");
    let follow = serve
        .call("follow", json!({"job_id": job_id, "cursor": cursor}))
        .await;
    assert_eq!(follow["result"]["key"], "k", "{follow}");
    serve
        .until(WAIT, |e| !of(e, "k", "exited").is_empty())
        .await;
    let mut all = seen.clone();
    all.extend(lines_of(&serve.events, "k"));
    assert_eq!(all, lines, "every line once, in order (cursor {cursor})");
    let exited = &of(&serve.events, "k", "exited")[0];
    assert_eq!(exited["log_lines"]["1"], 30, "{exited}");
    assert_eq!(
        fake.calls("SubmitJob"),
        1,
        "the daemon never submits on its own"
    );
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_input_detaches_or_kills_as_asked_and_shutdown_drains() {
    let fake = FakeAws::start().await;
    let long = || {
        Timeline::new()
            .status(JobStatus::Submitted, 1)
            .running(100_000)
            .succeeded()
    };
    fake.set_default_timeline(long());
    let machine = Machine::new(&fake);
    let running = |serve: &client::Serve, key: &str| {
        serve
            .events
            .iter()
            .any(|e| e["key"] == json!(key) && e["status"] == "RUNNING")
    };
    // Detach (the default): the job runs on, nothing is stopped.
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    serve
        .call("launch", json!({"key": "a", "script": machine.script()}))
        .await;
    serve
        .until(WAIT, |e| {
            e.iter()
                .any(|e| e["key"] == "a" && e["status"] == "RUNNING")
        })
        .await;
    assert!(running(&serve, "a"));
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
    assert_eq!(fake.calls("TerminateJob"), 0);
    // on_eof kill: the connection's job is stopped, and its end is reported before exiting.
    let mut serve = machine.start(&[]);
    serve.hello(json!({"on_eof": "kill"})).await;
    serve
        .call("launch", json!({"key": "b", "script": machine.script()}))
        .await;
    serve
        .until(WAIT, |e| {
            e.iter()
                .any(|e| e["key"] == "b" && e["status"] == "RUNNING")
        })
        .await;
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
    assert_eq!(fake.calls("TerminateJob"), 1);
    assert_eq!(
        of(&serve.events, "b", "exited").len(),
        1,
        "killed, and its end reported"
    );
    // shutdown drain: waits for the job's end; SIGTERM-free, stdin still open.
    fake.set_default_timeline(lines_job(&["x"], 2));
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    serve
        .call("launch", json!({"key": "c", "script": machine.script()}))
        .await;
    let answer = serve.call("shutdown", json!({"mode": "drain"})).await;
    assert_eq!(answer["result"]["mode"], "drain");
    assert_eq!(
        of(&serve.events, "c", "exited").len(),
        1,
        "drained before the answer"
    );
    assert_eq!(serve.exit(WAIT).await, Some(0));
    // SIGTERM: detach, write what is queued, exit 0.
    fake.set_default_timeline(long());
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    serve
        .call("launch", json!({"key": "d", "script": machine.script()}))
        .await;
    serve
        .until(WAIT, |e| !of(e, "d", "submitted").is_empty())
        .await;
    unsafe { libc::kill(serve.pid(), libc::SIGTERM) };
    assert_eq!(serve.exit(WAIT).await, Some(0));
    assert_eq!(fake.calls("TerminateJob"), 1, "SIGTERM stops no job");
    assert_eq!(fake.calls("SubmitJob"), 4);
}

/// Waits until `count` has not moved for `quiet` (sampled every 250 ms); its value then.
async fn plateau(count: impl Fn() -> usize, quiet: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut last, mut since) = (count(), tokio::time::Instant::now());
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = count();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
    panic!("still moving after {WAIT:?}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_pauses_the_log_reads_and_loses_nothing() {
    let (jobs, lines_per_job, page) = (6, 2000, 100);
    let fake = FakeAws::start().await;
    fake.set_log_page_size(page);
    let text: Vec<String> = (0..lines_per_job)
        .map(|n| format!("line {n:05} {}", "x".repeat(200)))
        .collect();
    let refs: Vec<&str> = text.iter().map(String::as_str).collect();
    fake.set_default_timeline(lines_job(&refs, 3));
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    let keys: Vec<String> = (0..jobs).map(|i| format!("s{i}")).collect();
    for key in &keys {
        serve
            .call("launch", json!({"key": key, "script": machine.script()}))
            .await;
    }
    // The client stops reading. Each job's 256 KiB credit covers about 700 of its 2,000 lines:
    // the followers must stop calling GetLogEvents, all of them, well before the last page.
    serve.paused.send_replace(true);
    let reads = || fake.calls("GetLogEvents");
    let stalled_at = plateau(reads, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reads(),
        stalled_at,
        "no read while the client reads nothing"
    );
    let pages = jobs * lines_per_job / page;
    assert!(
        stalled_at < pages,
        "paused before the end: {stalled_at} of {pages} pages read"
    );
    assert_eq!(fake.jobs().len(), jobs);
    serve.paused.send_replace(false);
    serve
        .until(WAIT, |e| {
            e.last().is_some_and(|l| l["event"] == "exited")
                && e.iter().filter(|e| e["event"] == "exited").count() >= jobs
        })
        .await;
    assert!(
        reads() >= stalled_at + jobs * 5,
        "the reads went on once the client read: {stalled_at} then {}",
        reads()
    );
    eprintln!(
        "stalled reader: {stalled_at} of {pages} GetLogEvents pages read before the pause, {} in all",
        reads()
    );
    for key in &keys {
        assert_eq!(
            lines_of(&serve.events, key),
            text,
            "every line of {key} once, in order"
        );
        let last = serve
            .events
            .iter()
            .rfind(|e| e["key"] == json!(key))
            .unwrap();
        assert_eq!(
            last["event"], "exited",
            "exited after the last line of {key}"
        );
        assert_eq!(last["log_lines"]["1"], lines_per_job, "{last}");
    }
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_with_array_submits_an_array_and_reports_its_events() {
    let fake = FakeAws::start().await;
    let child = |i: usize, code: i32| {
        Timeline::new()
            .status(JobStatus::Runnable, 1)
            .running(2)
            .logs(&[&format!("child {i} working")])
            .exit(code)
    };
    fake.script_next_array(support::ArrayScript::each(3, |i| {
        child(i, if i == 1 { 5 } else { 0 })
    }));
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    // run's messages for run's mistakes, before any AWS write.
    let bad = [
        (
            json!({"array": 0}),
            "--array",
            "expected 1 to 10000 children",
        ),
        (json!({"array": 2, "nodes": "2"}), "--nodes", "not both"),
        (
            json!({"array_sequential": true}),
            "--array-sequential",
            "needs --array N",
        ),
        (json!({"priority": "x"}), "--priority", ""),
    ];
    for (i, (extra, field, words)) in bad.into_iter().enumerate() {
        let mut params = json!({"key": format!("bad{i}"), "script": machine.script()});
        params
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let answer = serve.call("launch", params).await;
        assert_eq!(answer["error"]["code"], 1, "{answer}");
        assert_eq!(answer["error"]["data"]["field"], field, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{answer}");
    }
    assert_eq!(fake.mutating_calls(), Vec::<String>::new());

    let launch = json!({"key": "arr", "script": machine.script(), "array": 3, "show_failed": 1});
    let answer = serve.call("launch", launch.clone()).await;
    assert_eq!(answer["result"]["deduplicated"], false, "{answer}");
    serve
        .until(WAIT, |e| !of(e, "arr", "exited").is_empty())
        .await;
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].submit["arrayProperties"]["size"], 3,
        "{:?}",
        jobs[0].submit
    );
    let kinds: Vec<&str> = serve
        .events
        .iter()
        .filter(|e| e["key"] == "arr")
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"array_progress"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"exited"), "{kinds:?}");
    let failed = of(&serve.events, "arr", "child_failed");
    assert_eq!(failed.len(), 1, "{kinds:?}");
    assert_eq!(
        (failed[0]["index"].clone(), failed[0]["exit_code"].clone()),
        (json!(1), json!(5))
    );
    let done = of(&serve.events, "arr", "array_done");
    assert_eq!(done.len(), 1, "{kinds:?}");
    assert_eq!(done[0]["size"], 3);
    let exited = of(&serve.events, "arr", "exited")[0].clone();
    assert_eq!(
        exited["exit_code"], 5,
        "the children's common failure: {exited}"
    );
    // The same array as text is the same launch; another size is another.
    let mut as_text = launch.clone();
    as_text["array"] = json!("3");
    as_text["follow"] = json!(false);
    let again = serve.call("launch", as_text).await;
    assert_eq!(again["result"]["deduplicated"], true, "{again}");
    let mut other = launch;
    other["array"] = json!(4);
    assert_eq!(serve.call("launch", other).await["error"]["code"], 2);
    assert_eq!(fake.calls("SubmitJob"), 1);
    // A dependency on the array, child by child, and a priority: into SubmitJob as run puts them.
    let parent = exited["job_id"].as_str().unwrap().to_owned();
    let after = json!({"key": "after", "script": machine.script(), "follow": false,
                       "array": 3, "depends_on": [format!("{parent}:N_TO_N")]});
    serve.call("launch", after).await;
    serve
        .until(WAIT, |e| !of(e, "after", "submitted").is_empty())
        .await;
    let submit = &fake.jobs()[1].submit;
    assert_eq!(submit["dependsOn"][0]["jobId"], parent, "{submit}");
    assert_eq!(submit["dependsOn"][0]["type"], "N_TO_N", "{submit}");
    // Followed again by its id alone (as after a restart): the tracker sees an array's parent.
    let answer = serve.call("follow", json!({"job_id": parent})).await;
    assert!(answer["result"].is_object(), "{answer}");
    serve
        .until(WAIT, |e| of(e, "arr", "exited").len() == 2)
        .await;
    assert_eq!(of(&serve.events, "arr", "array_done").len(), 2);
    assert_eq!(of(&serve.events, "arr", "exited")[1]["exit_code"], 5);
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_node_launch_streams_its_main_node_and_ends_with_its_code() {
    let fake = FakeAws::start().await;
    fake.script_next_nodes(support::NodesScript::each(3, |i| {
        let timeline = Timeline::new().status(JobStatus::Runnable, 1);
        match i {
            // The main node outlasts the others, however busy the machine.
            0 => timeline.running(25).logs(&["main up", "main done"]).exit(4),
            1 => timeline.running(2).logs(&["node 1 broke"]).exit(9),
            _ => timeline.running(2).logs(&["node 2 fine"]).exit(0),
        }
    }));
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    let launch = json!({"key": "mnp", "script": machine.script(), "nodes": 3});
    let answer = serve.call("launch", launch).await;
    assert_eq!(answer["result"]["deduplicated"], false, "{answer}");
    serve
        .until(WAIT, |e| !of(e, "mnp", "exited").is_empty())
        .await;
    assert_eq!(fake.jobs()[0].submit["nodeOverrides"]["numNodes"], 3);
    assert_eq!(
        lines_of(&serve.events, "mnp"),
        ["main up", "main done"],
        "the main node's lines are the job's"
    );
    let failed = of(&serve.events, "mnp", "node_failed");
    assert_eq!(failed.len(), 1, "{:?}", serve.events);
    assert_eq!(failed[0]["node_index"], 1);
    let tails = of(&serve.events, "mnp", "node_log_tail");
    assert_eq!(
        tails.len(),
        1,
        "show_failed is 3 by default: {:?}",
        serve.events
    );
    assert_eq!(tails[0]["lines"], json!(["node 1 broke"]));
    let exited = of(&serve.events, "mnp", "exited")[0];
    assert_eq!(exited["exit_code"], 4, "the main node decides: {exited}");
    let kinds: Vec<&str> = serve
        .events
        .iter()
        .filter(|e| e["key"] == "mnp")
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"exited"), "{kinds:?}");
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_node_launch_takes_show_failed() {
    let fake = FakeAws::start().await;
    fake.script_next_nodes(support::NodesScript::each(3, |i| {
        let timeline = Timeline::new().status(JobStatus::Runnable, 1);
        match i {
            // As above: the other nodes end before the main one.
            0 => timeline.running(25).logs(&["main up"]).succeeded(),
            _ => timeline.running(2).logs(&["node broke"]).exit(9),
        }
    }));
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    let launch = json!({"key": "mnp", "script": machine.script(), "nodes": 3, "show_failed": 1});
    let answer = serve.call("launch", launch).await;
    assert_eq!(answer["result"]["deduplicated"], false, "{answer}");
    serve
        .until(WAIT, |e| !of(e, "mnp", "exited").is_empty())
        .await;
    assert_eq!(
        of(&serve.events, "mnp", "node_failed").len(),
        2,
        "{:?}",
        serve.events
    );
    let tails = of(&serve.events, "mnp", "node_log_tail");
    assert_eq!(
        tails.len(),
        1,
        "the first failed node only: {:?}",
        serve.events
    );
    assert_eq!(of(&serve.events, "mnp", "exited")[0]["exit_code"], 0);
    // `follow` takes it too, for a multi-node job as for an array.
    let job_id = of(&serve.events, "mnp", "exited")[0]["job_id"].clone();
    let answer = serve
        .call("follow", json!({"job_id": job_id, "show_failed": 0}))
        .await;
    assert!(answer["result"].is_object(), "{answer}");
    serve
        .until(WAIT, |e| of(e, "mnp", "exited").len() == 2)
        .await;
    assert_eq!(of(&serve.events, "mnp", "node_failed").len(), 4);
    let tails = of(&serve.events, "mnp", "node_log_tail");
    assert_eq!(tails.len(), 1, "none more: {:?}", serve.events);
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

/// `kill` of one node of a multi-node job is refused as `mfbatch kill` refuses it: Batch ends the
/// job with its main node, so a node is not stopped alone. Nothing is sent to AWS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_node_is_refused_and_names_the_job() {
    let fake = FakeAws::start().await;
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    let answer = serve
        .call("kill", json!({"job_id": "0f1e2d3c-job#1"}))
        .await;
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert_eq!(
        answer["error"]["data"]["job_id"], "0f1e2d3c-job",
        "{answer}"
    );
    let hint = answer["error"]["data"]["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("0f1e2d3c-job"), "{answer}");
    assert_eq!(fake.mutating_calls(), Vec::<String>::new());
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}

/// `array: true` on `follow` of a job that is no array's parent follows it as what it is: its
/// lines and its exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_with_array_of_a_plain_job_delivers_its_lines() {
    let fake = FakeAws::start().await;
    fake.set_default_timeline(
        Timeline::new()
            .status(JobStatus::Submitted, 1)
            .running(3)
            .logs(&["one", "two"])
            .exit(3),
    );
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    let launch = json!({"key": "plain", "script": machine.script(), "follow": false});
    serve.call("launch", launch).await;
    serve
        .until(WAIT, |e| !of(e, "plain", "submitted").is_empty())
        .await;
    let answer = serve
        .call(
            "follow",
            json!({"key": "plain", "array": true, "show_failed": 1}),
        )
        .await;
    assert!(answer["result"].is_object(), "{answer}");
    serve
        .until(WAIT, |e| !of(e, "plain", "exited").is_empty())
        .await;
    assert_eq!(lines_of(&serve.events, "plain"), ["one", "two"]);
    assert_eq!(of(&serve.events, "plain", "exited")[0]["exit_code"], 3);
    assert!(of(&serve.events, "plain", "array_done").is_empty());
    serve.close_stdin();
    assert_eq!(serve.exit(WAIT).await, Some(0));
}
