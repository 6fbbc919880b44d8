#!/usr/bin/env python3
"""Smoke test for serve.py: moto Batch jobs run as local processes, logs in CloudWatch.

Run with the harness venv:  $(tests/moto/setup-venv.sh | tail -n1) tests/moto/smoke_test.py
Ends with "N passed, M failed"; exits non-zero if anything failed.
"""
import json, os, subprocess, sys, threading, time, traceback

import boto3

HERE = os.path.dirname(os.path.abspath(__file__))
TERMINAL = ("SUCCEEDED", "FAILED")
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def start_server():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "serve.py"), "--port", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(60, proc.kill)  # never hang on a server that does not start
    timer.start()
    line = proc.stdout.readline()
    timer.cancel()
    if not line:
        sys.exit(f"serve.py exited ({proc.wait()}) before printing its JSON line")
    return proc, json.loads(line)


PROC, INFO = start_server()
SESSION = boto3.session.Session(aws_access_key_id=INFO["access_key_id"],
                                aws_secret_access_key=INFO["secret_access_key"],
                                region_name=INFO["region"])
BATCH = SESSION.client("batch", endpoint_url=INFO["endpoint"])
LOGS = SESSION.client("logs", endpoint_url=INFO["endpoint"])
S3 = SESSION.client("s3", endpoint_url=INFO["endpoint"])


def submit(name, command, env=None):
    """Register a job definition for `command` and submit it; returns the job id."""
    BATCH.register_job_definition(
        jobDefinitionName=name, type="container",
        containerProperties={"image": "python:3.11-slim", "command": command,
                             "environment": [{"name": "FROM_JOBDEF", "value": "jd"}],
                             "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                                      {"type": "MEMORY", "value": "512"}]})
    overrides = {"environment": [{"name": k, "value": v} for k, v in (env or {}).items()]}
    return BATCH.submit_job(jobName=name, jobQueue=INFO["queue"], jobDefinition=name,
                            containerOverrides=overrides)["jobId"]


def describe(job_id):
    return BATCH.describe_jobs(jobs=[job_id])["jobs"][0]


def wait_for(job_id, statuses, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = describe(job_id)
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout}s: {job['status']}")


def log_lines(job):
    stream = job["container"]["logStreamName"]
    events = LOGS.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream,
                                 startFromHead=True)["events"]
    for e in events:
        check(isinstance(e["timestamp"], int), f"float timestamp in {e}")
    return [e["message"] for e in events]


def process_gone(pid):
    """True if pid no longer exists (or is a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@test
def failing_job_exit_code_env_and_logs():
    cmd = ["sh", "-c", 'echo hello; echo "$GREETING"; echo err >&2; exit 3']
    t0 = time.time()
    job_id = submit("smoke-fail", cmd, {"GREETING": "world"})
    job = wait_for(job_id, TERMINAL)
    print(f"    terminal after {time.time() - t0:.2f}s", file=sys.stderr)
    check(job["status"] == "FAILED", f"status {job['status']}")
    check(job["container"].get("exitCode") == 3, f"exitCode {job['container'].get('exitCode')}")
    check(job["container"]["logStreamName"] == f"smoke-fail/default/{job_id}",
          job["container"]["logStreamName"])
    check(log_lines(job) == ["hello", "world", "err"], f"log lines {log_lines(job)}")
    env = job["container"]["environment"]
    names = [e["name"] for e in describe(job_id)["container"]["environment"]]
    check(names.count("AWS_BATCH_JOB_ID") == 1, f"environment grows: {names}")
    check({"GREETING", "FROM_JOBDEF"} <= {e["name"] for e in env}, f"environment {env}")


@test
def succeeding_job_sees_env_and_reaches_s3():
    code = ("import boto3, os; boto3.client('s3', endpoint_url=os.environ['METAFLOW_S3_ENDPOINT_URL'])"
            ".put_object(Bucket='mfbatch-e2e', Key='from-job', Body=os.environ['AWS_BATCH_JOB_ID']"
            " + ' ' + os.environ['FROM_JOBDEF']); print('uploaded')")
    job_id = submit("smoke-ok", [sys.executable, "-c", code],
                    {"METAFLOW_S3_ENDPOINT_URL": INFO["endpoint"]})
    t0 = time.time()
    wait_for(job_id, ("RUNNING",) + TERMINAL)
    check(time.time() - t0 < 2.0, f"RUNNING took {time.time() - t0:.2f}s")
    job = wait_for(job_id, TERMINAL)
    check(job["status"] == "SUCCEEDED", f"status {job['status']}: {log_lines(job)}")
    check(job["container"].get("exitCode") == 0, f"exitCode {job['container'].get('exitCode')}")
    check(log_lines(job) == ["uploaded"], f"log lines {log_lines(job)}")
    body = S3.get_object(Bucket="mfbatch-e2e", Key="from-job")["Body"].read().decode()
    check(body == f"{job_id} jd", f"S3 object body {body!r}")
    check(job["attempts"] and job["attempts"][-1]["container"].get("exitCode") == 0,
          f"attempts {job['attempts']}")


@test
def logs_stream_while_running():
    job_id = submit("smoke-stream", ["sh", "-c", "echo first; sleep 2; echo second"])
    deadline = time.time() + 5
    lines = []
    while time.time() < deadline and lines != ["first"]:
        job = describe(job_id)
        if job["container"].get("logStreamName"):
            lines = log_lines(job)
        time.sleep(0.1)
    check(lines == ["first"], f"expected ['first'] while running, got {lines}")
    check(describe(job_id)["status"] == "RUNNING", "job should still be running")
    job = wait_for(job_id, TERMINAL)
    check(job["status"] == "SUCCEEDED" and log_lines(job) == ["first", "second"],
          f"{job['status']} {log_lines(job)}")


def running_job_pids(name, prefix=""):
    """Start a job whose shell and background `sleep 30` print their pids."""
    job_id = submit(name, ["sh", "-c", prefix + 'sleep 30 & echo "pids $$ $!"; wait'])
    job = wait_for(job_id, ("RUNNING",) + TERMINAL)
    check(job["status"] == "RUNNING", f"status {job['status']}")
    deadline = time.time() + 5
    while time.time() < deadline:
        lines = log_lines(describe(job_id))
        if lines:
            return job_id, [int(p) for p in lines[0].split()[1:]]
        time.sleep(0.1)
    raise AssertionError("no pid line logged")


@test
def terminate_running_job_kills_process():
    job_id, pids = running_job_pids("smoke-terminate")
    BATCH.terminate_job(jobId=job_id, reason="smoke test says stop")
    t0 = time.time()
    job = wait_for(job_id, TERMINAL, timeout=5)
    print(f"    FAILED {time.time() - t0:.2f}s after terminate_job", file=sys.stderr)
    check(job["status"] == "FAILED", f"status {job['status']}")
    check(job.get("statusReason") == "smoke test says stop", f"reason {job.get('statusReason')}")
    check(all(process_gone(p) for p in pids), f"processes still alive: {pids}")


@test
def terminate_escalates_to_sigkill():
    # Both the shell and sleep ignore SIGTERM: serve.py must SIGKILL after its grace.
    job_id, pids = running_job_pids("smoke-stubborn", prefix="trap '' TERM; ")
    BATCH.terminate_job(jobId=job_id, reason="stop harder")
    job = wait_for(job_id, TERMINAL, timeout=6)
    check(job["status"] == "FAILED", f"status {job['status']}")
    check(job["container"].get("exitCode") == 137, f"exitCode {job['container'].get('exitCode')}")
    check(all(process_gone(p) for p in pids), f"processes still alive: {pids}")


@test
def server_shutdown_on_stdin_eof_kills_jobs():
    _, pids = running_job_pids("smoke-shutdown")
    PROC.stdin.close()
    rc = PROC.wait(timeout=10)
    check(rc == 0, f"serve.py exit code {rc}")
    time.sleep(0.2)
    check(all(process_gone(p) for p in pids), f"processes still alive: {pids}")


def main():
    passed = failed = 0
    try:
        for fn in TESTS:
            t0 = time.time()
            try:
                fn()
                passed += 1
                print(f"PASS {fn.__name__} ({time.time() - t0:.1f}s)", file=sys.stderr)
            except Exception:
                failed += 1
                print(f"FAIL {fn.__name__}\n{traceback.format_exc()}", file=sys.stderr)
    finally:
        if PROC.poll() is None:
            PROC.terminate()
            PROC.wait(timeout=10)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
