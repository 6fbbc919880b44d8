#!/usr/bin/env python3
"""moto server for mfbatch e2e tests, with AWS Batch jobs run as local processes.

Run with the venv from setup-venv.sh:
    python serve.py [--port 0] [--no-stdin] [--state-seconds S] [--count-calls] [-v]

Prints ONE JSON line on stdout (endpoint, region, bucket, queue, role_arn, keys),
then serves until stdin hits EOF (unless --no-stdin) or SIGTERM/SIGINT arrives.
All diagnostics go to stderr. With --count-calls, `GET /mfbatch/calls` answers the
AWS calls received so far by API (e.g. {"batch:DescribeJobs": 3}), for benchmarks.

moto's Batch backend ("docker" mode, the default) runs each job in a thread that
asks a docker client to run the container, polls it, then copies its logs into
CloudWatch Logs. There is no Docker engine here, so `Job.docker_client` is
replaced by LocalDockerClient: the command runs as a local process group (image
ignored) in a scratch dir, and its merged stdout/stderr is streamed line by line
into /aws/batch/job/<stream> with integer millisecond timestamps while it runs.
"""
import argparse, json, logging, os, shlex, shutil, signal, subprocess, sys, tempfile, threading, time

import boto3
import moto.settings as moto_settings
import moto.batch.models as batch_models
from moto.core.config import default_user_config
from moto.ec2.models import ec2_backends
from moto.ec2.models.route_tables import RouteTable
from moto.moto_api import state_manager
from moto.moto_api._internal.managed_state_model import ManagedState
from moto.server import ThreadedMotoServer

REGION, BUCKET, QUEUE = "us-east-1", "mfbatch-e2e", "mfbatch-e2e-queue"
KILL_GRACE_S = 2.0  # SIGTERM -> SIGKILL delay on TerminateJob (ECS uses 30 s)
POLL_S = 0.05  # moto's job thread sleeps 0.5-1 s between checks; we shorten that
LIVE, LIVE_LOCK = set(), threading.Lock()  # LocalContainers whose process may still run
JOBS_DIR = tempfile.mkdtemp(prefix="mfbatch-moto-")  # one scratch cwd per job inside


def log(msg):
    print(f"[serve.py] {msg}", file=sys.stderr, flush=True)


class LocalContainer:
    """Quacks like docker.models.containers.Container as far as Job.run needs."""

    def __init__(self, job, command, environment, name):
        self.job, self.name, self.status = job, name, "running"
        self.attrs = {"NetworkSettings": {"Networks": {}, "IPAddress": "127.0.0.1"}}
        self.exit_code, self.proc, self._last_ts = None, None, 0
        self._done = threading.Event()
        self.workdir = tempfile.mkdtemp(prefix="job-", dir=JOBS_DIR)
        # The stream exists (and DescribeJobs shows it) from RUNNING on, as on AWS.
        job.log_stream_name = job._stream_name
        if job.latest_attempt:
            job.latest_attempt["container"]["logStreamName"] = job._stream_name
        self.logs_backend = job._log_backend
        self.logs_backend.ensure_log_group(job._log_group)
        self.logs_backend.ensure_log_stream(job._log_group, job._stream_name)
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if job.stop:  # cancelled/terminated before RUNNING: never start the process
            job.never_ran = True  # so DescribeJobs shows no exitCode (see patch 5)
            return self._finish(137)
        try:
            self.proc = subprocess.Popen(
                argv, env=job_process_env(job, environment, name), cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)  # own process group, so kill() gets children too
        except OSError as err:  # like docker's "executable file not found"
            self._put(f"CannotStartContainerError: {err}")
            return self._finish(127)
        with LIVE_LOCK:
            LIVE.add(self)
        log(f"job {job.job_id}: pid {self.proc.pid}: {argv}")
        threading.Thread(target=self._supervise, daemon=True).start()

    def _put(self, line):
        # One CloudWatch event per line; timestamps are ints and never go backwards.
        self._last_ts = max(self._last_ts, int(time.time() * 1000))
        self.logs_backend.put_log_events(self.job._log_group, self.job._stream_name,
                                         [{"timestamp": self._last_ts, "message": line}])

    def _supervise(self):
        pump = threading.Thread(target=self._pump, daemon=True)
        pump.start()
        code = self.proc.wait()
        # Like docker: once the main process exits, the rest of the container dies.
        self._signal(signal.SIGKILL)
        pump.join()
        self._finish(128 - code if code < 0 else code)  # -9 -> 137, like docker

    def _pump(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:  # CloudWatch rejects empty messages; the awslogs driver drops them
                self._put(line)
        self.proc.stdout.close()

    def _finish(self, code):
        self.exit_code, self.status = code, "exited"
        self._done.set()
        with LIVE_LOCK:
            LIVE.discard(self)

    def _signal(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    # --- the docker Container API used by moto's Job.run ---
    def reload(self):
        pass  # status is kept current by _supervise

    def kill(self, signal_=None):
        """TerminateJob / timeout: SIGTERM the group, SIGKILL it after a grace period."""
        if self._done.is_set():
            return
        self._signal(signal.SIGTERM)
        threading.Timer(KILL_GRACE_S, lambda: self._done.is_set() or self._signal(signal.SIGKILL)).start()

    stop = kill

    def logs(self, **_):
        return b""  # already streamed into CloudWatch by _pump

    def wait(self, **_):
        self._done.wait()
        return {"StatusCode": self.exit_code}

    def remove(self, **_):
        self._done.wait(KILL_GRACE_S + 5)
        shutil.rmtree(self.workdir, ignore_errors=True)


class LocalDockerClient:
    """Stand-in for docker.from_env(): only containers.run() is used by Batch."""

    def __init__(self, job):
        self.containers = self
        self.job = job

    def run(self, image, command, environment=None, name=None, **_ignored):
        return LocalContainer(self.job, command, environment or {}, name)


def job_process_env(job, container_env, name=None):
    """Host env minus AWS_*/MOTO_*, plus what a Batch container sees, plus the job env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    queue = job.job_queue
    env.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_BATCH_JOB_ATTEMPT": str(len(job.attempts) or 1),
        "AWS_BATCH_JQ_NAME": queue.name,
        "AWS_BATCH_CE_NAME": queue.environments[0].name if queue.environments else "",
    })
    # Job definition env + containerOverrides + AWS_BATCH_JOB_ID, and moto's
    # MOTO_HOST/MOTO_PORT/MOTO_HTTP_ENDPOINT (pointed at us by main()).
    env.update(container_env)
    # An array child sees its index and the array's size, as on AWS (moto sets neither).
    index = (getattr(job, "array_properties", None) or {}).get("index")
    if index is not None:
        parent = job.all_jobs.get(job.job_id.rsplit(":", 1)[0])
        env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
        env["AWS_BATCH_JOB_ARRAY_SIZE"] = str(len(getattr(parent, "_child_jobs", None) or []))
    # A node of a multi-node job sees its index, the count and the main node's index, as on
    # AWS (moto sets none; its container for node i is named "<name>-<job id>-<i>").
    nodes = job.job_definition.node_properties if job.job_definition.type == "multinode" else None
    if nodes and name:
        index = name.rsplit("-", 1)[1]
        env.update(AWS_BATCH_JOB_NODE_INDEX=index, AWS_BATCH_JOB_NUM_NODES=nodes["numNodes"],
                   AWS_BATCH_JOB_MAIN_NODE_INDEX=nodes.get("mainNode", 0),
                   AWS_BATCH_JOB_ID=f"{job.job_id}#{index}")
    return {k: str(v) for k, v in env.items()}


def patch_moto(state_seconds):
    """Monkeypatch moto in-process (site-packages stay untouched); one comment per patch."""
    Job = batch_models.Job
    # 1. Real Batch, but jobs run as local processes instead of Docker containers.
    default_user_config["batch"]["use_docker"] = True  # not the batch_simple backend
    Job.docker_client = property(lambda self: LocalDockerClient(self))

    # 2. Speed: every state transition happens on the job thread's next check, and
    #    the checks (0.5 s / 1 s sleeps in moto) run every POLL_S instead.
    #    (--state-seconds S instead holds each of SUBMITTED..STARTING for S seconds.)
    state_manager.set_transition("batch::job", {"progression": "time", "seconds": state_seconds}
                                 if state_seconds > 0 else {"progression": "manual", "times": 1})

    class FastTime:  # stands in for the `time` module inside moto.batch.models only
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds):
            time.sleep(min(seconds, POLL_S))

    batch_models.time = FastTime()
    batch_models.sleep = FastTime.sleep

    # 3. ManagedState.status advances on read and is not thread-safe: a DescribeJobs
    #    racing the job thread could skip a state. Serialise it.
    status_lock, status_prop = threading.RLock(), ManagedState.status

    def locked_status(self):
        with status_lock:
            return status_prop.fget(self)

    Job.status = property(locked_status, status_prop.fset)

    # 4. moto's env merge appends to containerOverrides.environment on every call,
    #    so DescribeJobs grew a new AWS_BATCH_JOB_ID entry per call. Same merge
    #    (overrides win over the job definition), without the mutation.
    orig_prop = Job._get_container_property

    def container_property(self, p, default):
        if p != "environment":
            return orig_prop(self, p, default)
        merged = {e["name"]: e["value"] for e in
                  self.job_definition.container_properties.get("environment", [])}
        merged.update({e["name"]: e["value"] for e in
                       self.container_overrides.get("environment", [])})
        merged["AWS_BATCH_JOB_ID"] = self.job_id
        return [{"name": k, "value": v} for k, v in merged.items()]

    Job._get_container_property = container_property

    # 5. Fidelity: real DescribeJobs has container.exitCode (moto only puts it in
    #    ListJobs), attempts[].container.exitCode, and a statusReason for jobs
    #    that ran to completion or timed out (set before the status flips).
    orig_details, orig_mark, orig_stop_attempt = (
        Job._container_details, Job._mark_stopped, Job._stop_attempt)

    def container_details(self):
        details = orig_details(self)
        if self.job_stopped and self.exit_code is not None and not hasattr(self, "never_ran"):
            details["exitCode"] = self.exit_code
        return details

    def mark_stopped(self, success=True):
        if not self.job_stopped and self.job_stopped_reason is None:  # None: not terminated
            limit = self._get_attempt_duration()
            ran_for = (batch_models.datetime.now() - self.job_started_at).total_seconds()
            if self.exit_code is not None:
                self.job_stopped_reason = "Essential container in task exited"
            elif limit and ran_for >= limit:
                self.job_stopped_reason = "Job attempt duration exceeded timeout"
        orig_mark(self, success)

    def stop_attempt(self):
        orig_stop_attempt(self)
        if self.latest_attempt is not None:
            if self.exit_code is not None and not hasattr(self, "never_ran"):
                self.latest_attempt["container"]["exitCode"] = self.exit_code
            if self.job_stopped_reason is not None:
                self.latest_attempt["statusReason"] = self.job_stopped_reason

    Job._container_details, Job._mark_stopped = container_details, mark_stopped
    Job._stop_attempt = stop_attempt

    # 6. CloudFormation never deletes an AWS::EC2::RouteTable, and moto then refuses to delete
    #    the stack's VPC (DependencyViolation), so `mfbatch stack delete` of a stack that made
    #    its VPC failed. Delete it like DeleteRouteTable (tests/stack/test_template.py, patch 7).
    def delete_route_table(table, account_id, region_name):
        ec2_backends[account_id][region_name].delete_route_table(table.id)

    RouteTable.delete = delete_route_table

    # 7. moto reports every compute environment VALID; `doctor` tests need an INVALID one. An
    #    environment tagged mfbatch-test-status=<STATUS> is described with that status.
    describe_ces = batch_models.BatchBackend.describe_compute_environments

    def describe_compute_environments(self, *args, **kwargs):
        result = describe_ces(self, *args, **kwargs)
        for ce in result:
            status = (ce.get("tags") or {}).get("mfbatch-test-status")
            if status:
                ce["status"] = status
                ce["statusReason"] = "set by the test (tag mfbatch-test-status)"
        return result

    batch_models.BatchBackend.describe_compute_environments = describe_compute_environments

    # 8. UpdateStack: moto keeps only the parameters given at creation, so UsePreviousValue for
    #    one left at its default raised KeyError (an HTTP 500). Its previous value is its
    #    default: leave it out of the update and the default applies again, as on AWS.
    from moto.cloudformation.models import CloudFormationBackend
    resolve = CloudFormationBackend._resolve_update_parameters

    def resolve_update_parameters(self, instance, incoming_params):
        kept = [p for p in incoming_params
                if not p.get("UsePreviousValue") or p["ParameterKey"] in instance.parameters]
        return resolve(self, instance, kept)

    CloudFormationBackend._resolve_update_parameters = resolve_update_parameters

    # 9. Fidelity for arrays: a parent is PENDING while its children run and FAILED
    #    once they all ended and one failed (moto only ever marks it SUCCEEDED, and
    #    otherwise moves it through RUNNING as it is read); a child's DescribeJobs has
    #    arrayProperties.index.
    orig_describe = Job.describe

    def describe(self):
        result = orig_describe(self)
        children = getattr(self, "_child_jobs", None)
        index = (getattr(self, "array_properties", None) or {}).get("index")
        if children:
            ended = [c.status for c in children if c.status in ("SUCCEEDED", "FAILED")]
            if len(ended) == len(children) and "FAILED" in ended:
                result["status"] = "FAILED"
                result["statusReason"] = "Array Child Job failed"
                if not hasattr(self, "mfbatch_stopped_at"):
                    self.mfbatch_stopped_at = int(time.time() * 1000)
                result["stoppedAt"] = self.mfbatch_stopped_at
            elif len(ended) < len(children):
                result["status"] = "PENDING"
        elif index is not None:
            result["arrayProperties"] = {"index": index}
        return result

    Job.describe = describe

    # 10. TerminateJob / CancelJob on an array parent stop its children (moto only
    #    flags the parent, which never runs).
    orig_terminate = Job.terminate

    def terminate(self, reason):
        for child in getattr(self, "_child_jobs", None) or []:
            if child.status not in ("SUCCEEDED", "FAILED"):
                child.terminate(reason)
        orig_terminate(self, reason)

    Job.terminate = terminate

    # 11. Multi-node jobs: moto ignores SubmitJob's nodeOverrides, so `--nodes N` ran one node
    #     without mfbatch's environment. The job gets its own copy of the definition with
    #     numNodes from the override and each override's environment in the node ranges it
    #     targets (matched by their targetNodes text). Every node still writes to the job's one
    #     stream and there are no `#n` records (the follower's fallback path).
    import copy
    from moto.batch.responses import BatchResponse
    submitting = threading.local()
    orig_submitjob, orig_init = BatchResponse.submitjob, Job.__init__

    def submitjob(self):
        submitting.node_overrides = self._get_param("nodeOverrides")
        try:
            return orig_submitjob(self)
        finally:
            submitting.node_overrides = None

    def job_init(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        overrides = getattr(submitting, "node_overrides", None)
        if not overrides or self.job_definition.type != "multinode":
            return
        definition = copy.copy(self.job_definition)
        nodes = copy.deepcopy(definition.node_properties)
        nodes["numNodes"] = overrides.get("numNodes", nodes["numNodes"])
        for override in overrides.get("nodePropertyOverrides", []):
            env = override.get("containerOverrides", {}).get("environment", [])
            for node_range in nodes["nodeRangeProperties"]:
                if node_range["targetNodes"] == override["targetNodes"]:
                    container = node_range["container"]
                    names = {e["name"] for e in env}
                    container["environment"] = [e for e in container.get("environment", [])
                                                if e["name"] not in names] + env
        definition.node_properties = nodes
        self.job_definition = definition

    BatchResponse.submitjob, Job.__init__ = submitjob, job_init


class CallCounter:
    """WSGI middleware: counts each AWS call by service and operation; serves the counts."""

    S3_OPS = {"HEAD": "HeadObject", "GET": "GetObject", "PUT": "PutObject",
              "POST": "MultipartUpload", "DELETE": "DeleteObject"}

    def __init__(self, app):
        self.app, self.calls, self.lock = app, {}, threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/mfbatch/forget/"):  # Batch forgets a job, as it does after days
            from moto.core import DEFAULT_ACCOUNT_ID
            batch_models.batch_backends[DEFAULT_ACCOUNT_ID][REGION]._jobs.pop(
                path.rsplit("/", 1)[-1], None)
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        if path == "/mfbatch/calls":
            with self.lock:
                body = json.dumps(self.calls).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:  # JSON 1.1 (CloudWatch Logs): Logs_20140328.GetLogEvents
            op = "logs:" + target.rsplit(".", 1)[-1]
        elif path.startswith("/v1/"):  # Batch REST-JSON: /v1/describejobs
            op = "batch:" + path[4:]
        elif path.startswith("/moto-api"):
            op = None
        else:
            op = "s3:" + self.S3_OPS.get(environ.get("REQUEST_METHOD", ""), "Other")
        if op:
            with self.lock:
                self.calls[op] = self.calls.get(op, 0) + 1
        return self.app(environ, start_response)


def provision(endpoint):
    """Create the bucket, role, compute environment and queue the tests use."""
    session = boto3.session.Session(aws_access_key_id="testing",
                                    aws_secret_access_key="testing", region_name=REGION)
    client = lambda name: session.client(name, endpoint_url=endpoint)
    client("s3").create_bucket(Bucket=BUCKET)
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRole",
        "Principal": {"Service": ["batch.amazonaws.com", "ecs-tasks.amazonaws.com"]}}]}
    iam = client("iam")
    role_arn = iam.create_role(
        RoleName="mfbatch-e2e", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    # A MANAGED EC2 compute environment's instanceRole is an instance profile.
    profile_arn = iam.create_instance_profile(
        InstanceProfileName="mfbatch-e2e")["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName="mfbatch-e2e", RoleName="mfbatch-e2e")
    # MANAGED needs subnets and security groups: use moto's default VPC.
    ec2 = client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    by_vpc = [{"Name": "vpc-id", "Values": [vpc]}]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=by_vpc)["Subnets"]]
    groups = [g["GroupId"] for g in ec2.describe_security_groups(Filters=by_vpc)["SecurityGroups"]]
    batch = client("batch")
    ce_arn = batch.create_compute_environment(
        computeEnvironmentName="mfbatch-e2e-ce", type="MANAGED", state="ENABLED",
        serviceRole=role_arn,
        computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 16, "desiredvCpus": 0,
                          "instanceTypes": ["optimal"], "instanceRole": profile_arn,
                          "subnets": subnets, "securityGroupIds": groups[:1]},
    )["computeEnvironmentArn"]
    batch.create_job_queue(jobQueueName=QUEUE, state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce_arn}])
    return role_arn, ce_arn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--no-stdin", action="store_true", help="ignore stdin; stop on signals only")
    ap.add_argument("--state-seconds", type=float, default=0.0,
                    help="time each job spends in each of SUBMITTED..STARTING (default: ~0)")
    ap.add_argument("--count-calls", action="store_true",
                    help="count AWS calls by API; GET /mfbatch/calls reads them")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every HTTP request")
    args = ap.parse_args()

    out, sys.stdout = sys.stdout, sys.stderr  # stray prints must not corrupt the JSON line
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[key] = "testing"  # for provision(); never real credentials
    patch_moto(args.state_seconds)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    # werkzeug reads server.app per request; provisioning is not counted. Always installed for
    # /mfbatch/forget; counting is only reported with --count-calls.
    counter = CallCounter(server._server.app)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto hands jobs MOTO_HOST/MOTO_PORT for reaching it; by default it guesses
    # host.docker.internal:5000 (and shells out to curl docker.sock to do so).
    moto_settings.moto_server_host = lambda: f"http://{host}"
    moto_settings.moto_server_port = lambda: str(port)
    role_arn, ce_arn = provision(endpoint)
    server._server.app = counter

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if not args.no_stdin:
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    info = {"endpoint": endpoint, "region": REGION, "bucket": BUCKET, "queue": QUEUE,
            "role_arn": role_arn, "access_key_id": "testing", "secret_access_key": "testing",
            "compute_environment": ce_arn, "log_group": "/aws/batch/job"}
    out.write(json.dumps(info) + "\n")
    out.flush()
    log(f"serving on {endpoint}")

    while not stop.wait(0.5):
        pass
    log("shutting down")
    with LIVE_LOCK:
        running = list(LIVE)
    for container in running:
        container._signal(signal.SIGKILL)
    for container in running:
        container._done.wait(5)
    server.stop()
    shutil.rmtree(JOBS_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
