//! End-to-end: the real `mfbatch` binary runs Python steps on AWS Batch emulated by moto's server
//! (tests/moto/serve.py: S3, Batch, CloudWatch Logs; jobs run as local processes) and with
//! `--local`: sibling imports and `--env`, exit codes, script arguments, `--detach` then
//! `logs`/`status`, UTF-8 and 100,000-character lines, and Ctrl-C while the job runs.
//!
//! Each scenario runs once per backend (`<scenario>::batch`, `<scenario>::local`). The moto
//! server is started once per test binary; its venv comes from tests/moto/setup-venv.sh, or set
//! MFBATCH_MOTO_PYTHON to a python that has moto[server].

mod e2e;

use std::time::Duration;

use e2e::{describe_job, eventually, process_gone, run, Backend, Running, StepDir};

/// Generates `mod $scenario { fn batch(); fn local(); }` calling `$scenario(Backend)`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Backend;

            #[test]
            fn batch() {
                super::$scenario(Backend::Batch);
            }

            #[test]
            fn local() {
                super::$scenario(Backend::Local);
            }
        }
    )*};
}

on_both_backends!(
    sibling_import_and_env,
    exit_code_is_the_steps,
    script_arguments,
    utf8_and_long_lines,
    interrupt_stops_the_job,
);

/// A step that imports a module next to it and prints an `--env` value: exit 0, exactly its lines.
fn sibling_import_and_env(backend: Backend) {
    let step = StepDir::new(&[
        (
            "main.py",
            "import os, helper\n\
             print('greeting:', os.environ['GREETING'])\n\
             print(helper.shout(os.environ['GREETING']))\n",
        ),
        (
            "helper.py",
            "def shout(text):\n    return text.upper() + '!'\n",
        ),
    ]);
    let out = run(step.run_command(backend, "main.py", &["--env", "GREETING=hello from e2e"]));
    out.assert(0, &["greeting: hello from e2e", "HELLO FROM E2E!"]);
}

/// `mfbatch` exits with the step's exit code.
fn exit_code_is_the_steps(backend: Backend) {
    let step = StepDir::new(&[(
        "fail.py",
        "import sys\nprint('failing on purpose')\nsys.exit(3)\n",
    )]);
    let out = run(step.run_command(backend, "fail.py", &[]));
    out.assert(3, &["failing on purpose"]);
}

/// Arguments after `--` reach the script unchanged: spaces, empty, non-ASCII, quotes, `$`.
fn script_arguments(backend: Backend) {
    let step = StepDir::new(&[("args.py", "import sys\nprint(sys.argv[1:])\n")]);
    let args = ["--", "two words", "--flag", "", "ünï", "$HOME", "it's"];
    let out = run(step.run_command(backend, "args.py", &args));
    out.assert(
        0,
        &[r#"['two words', '--flag', '', 'ünï', '$HOME', "it's"]"#],
    );
}

/// 100,000 characters that are not one repeated byte: "012345678910111213…".
fn long_line() -> String {
    let digits: String = (0..30_000).map(|i: u32| i.to_string()).collect();
    digits[..100_000].to_owned()
}

/// Multi-byte UTF-8 and a 100,000-character line arrive intact and in order.
fn utf8_and_long_lines(backend: Backend) {
    let step = StepDir::new(&[(
        "text.py",
        "print('héllo wörld ✓ 日本語')\n\
         print(''.join(str(i) for i in range(30000))[:100000])\n\
         print('done')\n",
    )]);
    let out = run(step.run_command(backend, "text.py", &[]));
    let long = long_line();
    assert_eq!(long.len(), 100_000);
    out.assert(0, &["héllo wörld ✓ 日本語", &long, "done"]);
}

/// Ctrl-C while the step runs: the job is stopped, `mfbatch` exits 130, the step's process is gone.
fn interrupt_stops_the_job(backend: Backend) {
    let step = StepDir::new(&[(
        "sleepy.py",
        "import os, sys, time\n\
         job = os.environ.get('AWS_BATCH_JOB_ID') or os.environ.get('MFBATCH_LOCAL_JOB_ID')\n\
         print('sleeping', job, os.getpid(), flush=True)\n\
         time.sleep(60)\n\
         print('woke up: the job was not stopped')\n",
    )]);
    let mut running = Running::start(step.run_command(backend, "sleepy.py", &[]));
    let first = running.next_line(Duration::from_secs(40));
    let Some(first) = first else {
        panic!(
            "the step's first line never arrived\n{}",
            running.wait(Duration::ZERO).describe()
        );
    };
    let fields: Vec<&str> = first.split_whitespace().collect();
    let [word, job_id, pid] = fields[..] else {
        panic!("unexpected first line {first:?}");
    };
    assert_eq!(word, "sleeping");
    let pid: i32 = pid.parse().expect("a pid");
    assert!(!process_gone(pid), "the step (pid {pid}) should be running");

    let interrupted = std::time::Instant::now();
    running.signal(libc::SIGINT);
    let out = running.wait(Duration::from_secs(20));
    let took = interrupted.elapsed();
    out.assert(130, &[first.trim_end()]);
    // The promise to the user: Ctrl-C returns within 5 s, whatever the job does.
    assert!(
        took <= Duration::from_secs(6),
        "Ctrl-C took {took:?}\n{}",
        out.describe()
    );
    assert!(
        eventually(Duration::from_secs(5), || process_gone(pid)),
        "the step (pid {pid}) still runs 5 s after mfbatch exited\n{}",
        out.describe()
    );

    if backend == Backend::Batch {
        // The step's end records showed it stopped (SIGTERM forwarded: 128 + 15).
        assert!(
            out.stderr
                .contains(&format!("Stopped: {job_id} (step exited 143)")),
            "{}",
            out.describe()
        );
        // Batch recorded the stop: through mfbatch, and straight from moto.
        let status = run(step.mfbatch(backend, &["status", job_id]));
        assert!(
            status.code == Some(0)
                && status.stdout.contains(job_id)
                && status.stdout.contains("FAILED"),
            "mfbatch status after Ctrl-C\n{}",
            status.describe()
        );
        let job = describe_job(job_id);
        assert_eq!(job["status"], "FAILED", "DescribeJobs: {job:#}");
        let reason = job["statusReason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("interrupted"),
            "DescribeJobs statusReason should say the user interrupted it: {job:#}"
        );
    }
}

/// `run --detach` prints only the job id; `logs` then prints the step's lines, `status` shows SUCCEEDED.
#[test]
fn detach_then_logs_and_status_batch() {
    let backend = Backend::Batch;
    let step = StepDir::new(&[(
        "slow.py",
        "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')\n",
    )]);
    let detached = run(step.run_command(backend, "slow.py", &["--detach"]));
    let job_id = detached.stdout.trim_end_matches('\n');
    assert!(
        detached.code == Some(0)
            && detached.stdout.ends_with('\n')
            && !job_id.is_empty()
            && !job_id.contains(char::is_whitespace),
        "run --detach should print just the job id\n{}",
        detached.describe()
    );
    // The id is a real Batch job (asked of moto, not of mfbatch).
    assert_eq!(describe_job(job_id)["jobId"], job_id);

    let logs = run(step.mfbatch(backend, &["logs", job_id]));
    logs.assert(0, &["first", "second"]);

    let status = run(step.mfbatch(backend, &["status", job_id]));
    let line = status.stdout.trim_end();
    assert!(
        status.code == Some(0)
            && !line.contains('\n')
            && line.starts_with(job_id)
            && line.split_whitespace().nth(1) == Some("SUCCEEDED"),
        "mfbatch status should show one SUCCEEDED line\n{}",
        status.describe()
    );
    assert_eq!(describe_job(job_id)["status"], "SUCCEEDED");
}

/// An array of 5 on moto: each child prints its index and its `--array-args` line; child 3
/// fails with 4. `run` exits 4, streams the followed children, lists the failure with the failed
/// child's last lines, and `<parent>:<i>` ids work for `logs`.
#[test]
fn array_children_get_their_index_and_line_batch() {
    let backend = Backend::Batch;
    let step = StepDir::new(&[
        (
            "child.py",
            "import os, sys\n\
             i = int(os.environ['MFBATCH_ARRAY_INDEX'])\n\
             print('child', i, 'of', os.environ['MFBATCH_ARRAY_SIZE'], 'args', sys.argv[1:])\n\
             if i == 3:\n    print('child 3 fails')\n    sys.exit(4)\n",
        ),
        ("args.txt", "--x 0\n--x 1\n'two words' 2\n--x 3\n--x 4\n"),
    ]);
    let args_file = step.script("args.txt").display().to_string();
    let out = run(step.run_command(
        backend,
        "child.py",
        &[
            "--array",
            "5",
            "--array-args",
            &args_file,
            "--follow-index",
            "0",
            "--follow-index",
            "2",
            "--",
            "--fixed",
        ],
    ));
    assert_eq!(out.code, Some(4), "{}", out.describe());
    let mut lines: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.split_once(" | ").map_or(l, |(_, line)| line))
        .collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "child 0 of 5 args ['--fixed', '--x', '0']",
            "child 2 of 5 args ['--fixed', 'two words', '2']",
        ],
        "{}",
        out.describe()
    );
    for expected in [
        "failed children: exit 4 × 1 (3)",
        "  | child 3 of 5 args ['--fixed', '--x', '3']",
        "  | child 3 fails",
        "1 of 5 children failed: exit 4 × 1 (3)",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?}\n{}",
            out.describe()
        );
    }
    let parent = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Submitted "))
        .and_then(|l| {
            l.split_once(" (")?
                .1
                .split_once(')')
                .map(|(id, _)| id.to_owned())
        })
        .expect("the parent's id");
    let logs = run(step.mfbatch(backend, &["logs", &format!("{parent}:1")]));
    logs.assert(0, &["child 1 of 5 args ['--fixed', '--x', '1']"]);
    assert_eq!(describe_job(&format!("{parent}:3"))["status"], "FAILED");
}

/// `--nodes 2` on moto (no `#n` node records, every node on the job's one stream; serve.py gives
/// the nodes their index and mfbatch's environment): both nodes run the script, see their index,
/// the count and the main node's address, and `run` follows the job through its own stream.
#[test]
fn nodes_get_their_index_and_the_main_address_batch() {
    let backend = Backend::Batch;
    let step = StepDir::new(&[(
        "node.py",
        "import os\n\
         print('node', os.environ['MFBATCH_NODE_INDEX'], 'of', os.environ['MFBATCH_NUM_NODES'],\n\
               'main at', bool(os.environ['MFBATCH_MAIN_NODE_ADDRESS']))\n",
    )]);
    let out = run(step.run_command(backend, "node.py", &["--nodes", "2"]));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["node 0 of 2 main at True", "node 1 of 2 main at True"],
        "both nodes' lines, not their end records\n{}",
        out.describe()
    );
}
