"""Tests for bootstrap.py (stdlib unittest).

Run from the repo root:
    python3 -m unittest discover -s src/bootstrap -p 'test_*.py'

End-to-end tests run the bootstrap exactly as the job's sh stub does,
`python -u -c "$MFBATCH_BOOTSTRAP"`, against a fake S3 on 127.0.0.1.
"""
import calendar
import hashlib
import http.server
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bootstrap  # noqa: E402

with open(os.path.join(HERE, "bootstrap.py"), encoding="utf-8") as _f:
    SOURCE = _f.read()

# How long a signalled bootstrap may take to exit: generous, as the suite runs beside others on
# a busy machine; its steps sleep far longer, so a signal that was lost still fails the test.
STOP_WAIT = 30

# The job definition's command: bootstrap::STUB, read from src/bootstrap/mod.rs so
# this test runs exactly what jobs run.
with open(os.path.join(HERE, "mod.rs"), encoding="utf-8") as _f:
    STUB = re.search(r'pub const STUB: &str = r#"(.*?)"#;', _f.read()).group(1)

STEP = """\
import os, sys
import helper
print("args=%r" % (sys.argv[1:],))
print("greeting=" + helper.greet(os.environ.get("STEP_NAME", "?")))
print("bootstrap_env=%r" % (os.environ.get("MFBATCH_BOOTSTRAP"),))
print("cwd_is_root=%r" % (os.path.abspath(os.getcwd()) == os.path.abspath(os.environ["PYTHONPATH"].split(os.pathsep)[0]),))
print("unbuffered=%s" % os.environ.get("PYTHONUNBUFFERED"))
"""
HELPER = "def greet(name):\n    return 'hello ' + name\n"


def make_package(files=(), members=()):
    """tar.gz bytes: `files` maps name -> text; `members` are raw
    (TarInfo, bytes-or-None) pairs for hostile entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in dict(files).items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def sym(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def sha(data):
    return hashlib.sha256(data).hexdigest()


class FakeS3(http.server.BaseHTTPRequestHandler):
    """Serves `objects`; `plan[path]` is a list of statuses to answer first.
    Also plays the ECS credentials endpoint and IMDSv2."""
    objects, plan, requests = {}, {}, []
    stall = threading.Event()
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", ctype="application/xml"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client went away (signal tests)
            pass

    def do_PUT(self):
        self.requests.append(("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.path == "/latest/api/token" and self.headers.get(
                "X-aws-ec2-metadata-token-ttl-seconds") == "21600":
            return self._send(200, b"imds-token", "text/plain")
        self._send(403)

    def do_GET(self):
        self.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
        creds = json.dumps({"AccessKeyId": "AKIDROLE", "SecretAccessKey": "s3cr3t",
                            "Token": "role-token"}).encode()
        if self.path == "/creds":
            ok = self.headers.get("Authorization") == "ecs-auth"
            return self._send(200 if ok else 401, creds if ok else b"", "application/json")
        if self.path.startswith("/latest/meta-data/iam/security-credentials/"):
            if self.headers.get("X-aws-ec2-metadata-token") != "imds-token":
                return self._send(401)
            role = self.path.rsplit("/", 1)[1]
            return self._send(200, creds if role == "my-role" else b"my-role\n", "text/plain")
        if self.path == "/bucket/slow":
            self.stall.wait(10)
        queued = self.plan.get(self.path)
        if queued:
            status = queued.pop(0)
            return self._send(status, b"<Error><Code>Injected%d</Code></Error>" % status)
        if self.path not in self.objects:
            return self._send(404, b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code>"
                                   b"<Message>The specified key does not exist.</Message></Error>")
        self._send(200, self.objects[self.path], "application/octet-stream")


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeS3)
        cls.thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
        cls.thread.start()
        cls.endpoint = "http://127.0.0.1:%d" % cls.server.server_address[1]

    @classmethod
    def tearDownClass(cls):
        FakeS3.stall.set()
        cls.server.shutdown()
        cls.server.server_close()

    def setUp(self):
        FakeS3.objects.clear()
        FakeS3.plan.clear()
        del FakeS3.requests[:]
        FakeS3.stall.clear()
        self.tmp = tempfile.mkdtemp(prefix="mfbatch-test-")
        self.parent = os.path.join(self.tmp, "work")
        os.mkdir(self.parent)
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def env(self, data, key="bucket/pkg.tgz", script="step.py", args=None, **extra):
        """A clean job environment with `data` uploaded at s3://`key`."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "MFBATCH_", "METAFLOW_", "PYTHON"))
               and "proxy" not in k.lower()}
        FakeS3.objects["/" + urllib.parse.quote(key)] = data
        env.update({
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ACCESS_KEY_ID": "AKIDTEST",
            "AWS_SECRET_ACCESS_KEY": "secretkey",
            "AWS_REGION": "eu-west-1",
            "METAFLOW_S3_ENDPOINT_URL": self.endpoint,
            "MFBATCH_BOOTSTRAP": SOURCE,
            "MFBATCH_BOOTSTRAP_RETRY_BASE_SECONDS": "0.01",
            "MFBATCH_WORKDIR_PARENT": self.parent,
            "MFBATCH_PACKAGE_URL": "s3://" + key,
            "MFBATCH_PACKAGE_SHA256": sha(data),
            "MFBATCH_SCRIPT": script,
            "MFBATCH_ARGS": json.dumps(args or []),
        })
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def run_bootstrap(self, env, via_stub=False):
        cmd = ["sh", "-c", STUB] if via_stub else [sys.executable, "-u", "-c", env["MFBATCH_BOOTSTRAP"]]
        return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=30)

    def assertFailure(self, proc, code, *needles):
        self.assertEqual(proc.returncode, code, proc.stderr)
        self.assertEqual(proc.stdout, "")
        last = proc.stderr.splitlines()
        self.assertTrue(last and last[-1].startswith("mfbatch-bootstrap: "), proc.stderr)
        for needle in needles:
            self.assertIn(needle, last[-1])
        self.assertEqual(os.listdir(self.parent), [], "work dir not cleaned up")

    def test_quiet_by_default(self):
        """Without MFBATCH_BOOTSTRAP_VERBOSE the job's output is the step's alone."""
        p = self.run_bootstrap(self.env(self.simple()))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "")

    def simple(self, **files):
        return make_package(dict({"step.py": STEP, "helper.py": HELPER}, **files))


class SigV4Test(unittest.TestCase):
    def test_aws_documented_s3_get_example(self):
        # "GET Object" example from the AWS SigV4-for-S3 documentation.
        now = calendar.timegm((2013, 5, 24, 0, 0, 0))
        h = bootstrap.sign(
            "GET", "https://examplebucket.s3.amazonaws.com/test.txt",
            {"Range": "bytes=0-9", "x-amz-content-sha256": sha(b"")},
            ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None),
            "us-east-1", now=now)
        self.assertEqual(h["x-amz-date"], "20130524T000000Z")
        self.assertEqual(h["host"], "examplebucket.s3.amazonaws.com")
        self.assertEqual(
            h["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")

    def test_session_token_is_signed(self):
        h = bootstrap.sign("GET", "https://b.s3.us-east-1.amazonaws.com/k",
                           {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"},
                           ("AK", "SK", "TOKEN"), "us-east-1", now=0)
        self.assertEqual(h["x-amz-security-token"], "TOKEN")
        self.assertIn("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,",
                      h["authorization"])

    def test_urls(self):
        u = bootstrap.s3_http_url
        self.assertEqual(u("bkt", "a/b c+d~e_f.tgz", "eu-west-1"),
                         "https://bkt.s3.eu-west-1.amazonaws.com/a/b%20c%2Bd~e_f.tgz")
        self.assertEqual(u("my.bkt", "k=1&x", "us-east-1"),
                         "https://s3.us-east-1.amazonaws.com/my.bkt/k%3D1%26x")
        self.assertEqual(u("bkt", "d/ü?#.tgz", "r", "http://127.0.0.1:5000/"),
                         "http://127.0.0.1:5000/bkt/d/%C3%BC%3F%23.tgz")


class CredentialsTest(Base):
    def test_env_first(self):
        self.assertEqual(bootstrap.credentials({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
                                                "AWS_SESSION_TOKEN": "c"}), ("a", "b", "c"))

    def test_container_full_uri_with_token(self):
        env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": self.endpoint + "/creds",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN": "ecs-auth"}
        self.assertEqual(bootstrap.credentials(env), ("AKIDROLE", "s3cr3t", "role-token"))

    def test_imdsv2(self):
        env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.endpoint}
        self.assertEqual(bootstrap.credentials(env), ("AKIDROLE", "s3cr3t", "role-token"))
        self.assertEqual([r[:2] for r in FakeS3.requests], [
            ("PUT", "/latest/api/token"),
            ("GET", "/latest/meta-data/iam/security-credentials/"),
            ("GET", "/latest/meta-data/iam/security-credentials/my-role")])

    def test_imds_disabled_and_failures_raise_lookup_error(self):
        with self.assertRaises(LookupError):
            bootstrap.credentials({"AWS_EC2_METADATA_DISABLED": "TRUE"})
        with self.assertRaises(LookupError):  # wrong token -> 401
            bootstrap.credentials({"AWS_CONTAINER_CREDENTIALS_FULL_URI": self.endpoint + "/creds"})


class EndToEndTest(Base):
    def test_full_run_signed(self):
        data = self.simple()
        env = self.env(data, args=["--flag", "a b", "ü"], STEP_NAME="start",
                       AWS_SESSION_TOKEN="sess-tok", PYTHONPATH="/nonexistent-extra",
                       MFBATCH_BOOTSTRAP_VERBOSE="1")
        p = self.run_bootstrap(env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, "args=['--flag', 'a b', 'ü']\ngreeting=hello start\n"
                                   "bootstrap_env=None\ncwd_is_root=True\nunbuffered=1\n")
        self.assertRegex(p.stderr, r"^mfbatch-bootstrap: package %s ready in \d+\.\d s, "
                                   r"running step\.py\n$" % sha(data)[:12])
        [(method, path, headers)] = FakeS3.requests
        self.assertEqual((method, path), ("GET", "/bucket/pkg.tgz"))
        auth = headers["authorization"]
        self.assertTrue(auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/"), auth)
        self.assertIn("/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;"
                      "x-amz-date;x-amz-security-token,", auth)
        self.assertEqual(headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD")
        self.assertEqual(headers["x-amz-security-token"], "sess-tok")
        # The server can verify the signature from what it received.
        ts = calendar.timegm(time.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ"))
        again = bootstrap.sign("GET", self.endpoint + path,
                               {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"},
                               ("AKIDTEST", "secretkey", "sess-tok"), "eu-west-1", now=ts)
        self.assertEqual(auth, again["authorization"])
        self.assertEqual(headers["host"], again["host"])
        self.assertEqual(os.listdir(self.parent), [], "work dir not cleaned up")

    def test_via_sh_stub_with_subdir_script_and_odd_key(self):
        data = make_package({"flows/step.py": "import helper; print(helper.greet('sub'))\n",
                             "helper.py": HELPER})
        p = self.run_bootstrap(self.env(data, key="bucket/runs/a b+c~1.tgz",
                                        script="flows/step.py"), via_stub=True)
        self.assertEqual((p.returncode, p.stdout), (0, "hello sub\n"), p.stderr)
        self.assertEqual(FakeS3.requests[0][1], "/bucket/runs/a%20b%2Bc~1.tgz")

    def test_unsigned_when_no_credentials(self):
        env = self.env(self.simple(), AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
        p = self.run_bootstrap(env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("mfbatch-bootstrap: no AWS credentials", p.stderr)
        self.assertIn("unsigned", p.stderr)
        self.assertNotIn("authorization", FakeS3.requests[0][2])

    def test_region_fallbacks(self):
        for extra, region in (({"AWS_REGION": None, "AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
                              ({"AWS_REGION": None}, "us-east-1")):
            del FakeS3.requests[:]
            p = self.run_bootstrap(self.env(self.simple(), **extra))
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("/%s/s3/aws4_request," % region, FakeS3.requests[0][2]["authorization"])

    def test_file_url(self):
        data = self.simple()
        path = pathlib.Path(self.tmp, "dir with space", "pkg.tgz")
        path.parent.mkdir()
        path.write_bytes(data)
        env = self.env(data, MFBATCH_PACKAGE_URL=path.as_uri(), STEP_NAME="local")
        p = self.run_bootstrap(env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("greeting=hello local\n", p.stdout)
        self.assertEqual(FakeS3.requests, [])

    def test_file_url_unencoded_like_local_store(self):
        # store.rs writes format!("file://{}", path.display()): no escaping.
        data = self.simple()
        path = os.path.join(self.tmp, "odd 100% #1?", "pkg.tgz")
        os.mkdir(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        p = self.run_bootstrap(self.env(data, MFBATCH_PACKAGE_URL="file://" + path))
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_file_url_missing(self):
        env = self.env(b"x", MFBATCH_PACKAGE_URL="file:///nonexistent/pkg.tgz")
        self.assertFailure(self.run_bootstrap(env), 121, "/nonexistent/pkg.tgz")

    def test_retries_5xx_then_succeeds(self):
        FakeS3.plan["/bucket/pkg.tgz"] = [500, 503, 429]
        p = self.run_bootstrap(self.env(self.simple()))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(FakeS3.requests), 4)
        self.assertEqual(p.stderr.count("retrying in"), 3)

    def test_gives_up_after_retries(self):
        FakeS3.plan["/bucket/pkg.tgz"] = [503] * 10
        p = self.run_bootstrap(self.env(self.simple()))
        self.assertFailure(p, 121, "after 6 tries", "HTTP 503 Injected503")
        self.assertEqual(len(FakeS3.requests), 6)

    def test_404_fails_at_once(self):
        env = self.env(self.simple())
        env["MFBATCH_PACKAGE_URL"] = "s3://bucket/missing.tgz"
        p = self.run_bootstrap(env)
        self.assertFailure(p, 121, "s3://bucket/missing.tgz", "HTTP 404 NoSuchKey")
        self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
        self.assertEqual(len(FakeS3.requests), 1)

    def test_403_fails_at_once(self):
        FakeS3.plan["/bucket/pkg.tgz"] = [403]
        p = self.run_bootstrap(self.env(self.simple()))
        self.assertFailure(p, 121, "HTTP 403 Injected403")
        self.assertEqual(len(FakeS3.requests), 1)

    def test_connection_refused_is_retried(self):
        with socket_port() as port:
            env = self.env(self.simple(), METAFLOW_S3_ENDPOINT_URL="http://127.0.0.1:%d" % port)
        p = self.run_bootstrap(env)
        self.assertFailure(p, 121, "after 6 tries")
        self.assertEqual(p.stderr.count("retrying in"), 5)

    def test_sha_mismatch(self):
        env = self.env(self.simple(), MFBATCH_PACKAGE_SHA256="0" * 64)
        self.assertFailure(self.run_bootstrap(env), 122, "sha256")

    def test_not_a_tarball(self):
        self.assertFailure(self.run_bootstrap(self.env(b"just some bytes")), 122, "unpack")

    def test_truncated_gzip(self):
        self.assertFailure(self.run_bootstrap(self.env(self.simple()[:-30])), 122)

    def test_script_exit_code(self):
        data = make_package({"step.py": "import sys; print('bye'); sys.exit(3)\n"})
        p = self.run_bootstrap(self.env(data))
        self.assertEqual((p.returncode, p.stdout), (3, "bye\n"), p.stderr)

    def test_script_killed_by_signal(self):
        data = make_package({"step.py": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"})
        self.assertEqual(self.run_bootstrap(self.env(data)).returncode, 128 + signal.SIGKILL)

    def test_sigterm_is_forwarded(self):
        step = ("import signal, sys, time\n"
                "def bye(n, f):\n    print('got signal %d' % n); sys.exit(0)\n"
                "signal.signal(signal.SIGTERM, bye)\n"
                "print('ready', flush=True)\ntime.sleep(120)\nsys.exit(9)\n")
        env = self.env(make_package({"step.py": step}))
        proc = subprocess.Popen([sys.executable, "-u", "-c", SOURCE], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
        try:
            self.assertEqual(proc.stdout.readline(), "ready\n")
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=STOP_WAIT)
        finally:
            proc.kill()
            proc.wait()
        self.assertEqual((proc.returncode, out), (0, "got signal %d\n" % signal.SIGTERM), err)

    def test_sigterm_while_downloading(self):
        env = self.env(self.simple(), key="bucket/slow")
        proc = subprocess.Popen([sys.executable, "-u", "-c", SOURCE], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
        try:
            deadline = time.time() + 10
            while not FakeS3.requests and time.time() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=STOP_WAIT)
        finally:
            FakeS3.stall.set()
            proc.kill()
            proc.wait()
        self.assertEqual(proc.returncode, 128 + signal.SIGTERM, err)
        self.assertIn("mfbatch-bootstrap: interrupted by signal", err)
        self.assertEqual(os.listdir(self.parent), [])


    def test_dev_mode_shows_no_warnings(self):
        # -X dev turns on ResourceWarning/DeprecationWarning; none may appear,
        # on success nor on the error paths (HTTP errors, retries, corrupt).
        FakeS3.plan["/bucket/pkg.tgz"] = [500]
        cases = [(self.env(self.simple()), 0),
                 (self.env(self.simple(), MFBATCH_PACKAGE_URL="s3://bucket/nope"), 121),
                 (self.env(b"junk"), 122),
                 (self.env(self.simple(), AWS_ACCESS_KEY_ID=None,
                           AWS_EC2_METADATA_DISABLED=None,
                           AWS_EC2_METADATA_SERVICE_ENDPOINT=self.endpoint), 0)]
        for env, code in cases:
            p = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-u", "-c", SOURCE],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=30)
            self.assertEqual(p.returncode, code, p.stderr)
            self.assertNotIn("Warning", p.stderr)
            self.assertEqual([l for l in p.stderr.splitlines()
                              if not l.startswith("mfbatch-bootstrap: ")], [], p.stderr)


class BadEnvironmentTest(Base):
    def test_missing_variables(self):
        env = self.env(self.simple(), MFBATCH_SCRIPT=None, MFBATCH_PACKAGE_SHA256=None)
        self.assertFailure(self.run_bootstrap(env), 123, "MFBATCH_PACKAGE_SHA256", "MFBATCH_SCRIPT")

    def test_bad_args(self):
        for bad in ('{"a": 1}', "[1, 2]", "not json"):
            env = self.env(self.simple(), MFBATCH_ARGS=bad)
            self.assertFailure(self.run_bootstrap(env), 123, "MFBATCH_ARGS")

    def test_bad_sha_and_url(self):
        self.assertFailure(self.run_bootstrap(self.env(b"", MFBATCH_PACKAGE_SHA256="xyz")), 123)
        self.assertFailure(self.run_bootstrap(
            self.env(b"", MFBATCH_PACKAGE_URL="https://example.com/p.tgz")), 123)
        self.assertFailure(self.run_bootstrap(self.env(b"", MFBATCH_PACKAGE_URL="s3://bucket")), 123)

    def test_script_not_in_package(self):
        for script in ("nope.py", "../step.py", "/etc/hostname"):
            p = self.run_bootstrap(self.env(self.simple(), script=script))
            self.assertFailure(p, 123, "not in the package")


class UnsafeArchiveTest(Base):
    def hostile(self, *members, **files):
        data = make_package(dict({"step.py": STEP, "helper.py": HELPER}, **files), members)
        p = self.run_bootstrap(self.env(data))
        self.assertFailure(p, 122)
        return p

    def test_dotdot_member(self):
        info = tarfile.TarInfo("../evil")
        p = self.hostile((info, b"pwned"))
        self.assertIn("unsafe member name '../evil'", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.parent, "evil")))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "evil")))

    def test_nested_dotdot_member(self):
        self.hostile((tarfile.TarInfo("a/../../evil"), b"pwned"))
        self.assertFalse(os.path.exists(os.path.join(self.parent, "evil")))

    def test_absolute_member(self):
        target = os.path.join(self.tmp, "abs-evil")
        self.hostile((tarfile.TarInfo(target), b"pwned"))
        self.assertFalse(os.path.exists(target))

    def test_symlink_outside(self):
        self.hostile(sym("passwd", "/etc/passwd"))

    def test_relative_symlink_outside(self):
        self.hostile(sym("sub/up", "../../.."))

    def test_hardlink_outside(self):
        self.hostile(sym("pw", "../../../../../../etc/passwd", tarfile.LNKTYPE))

    def test_write_through_symlink_chain(self):
        # d -> b/.. looks harmless while b is missing; b -> . then makes d the
        # parent of the package dir. Writing d/evil must still be refused.
        self.hostile(sym("d", "b/.."), sym("b", "."), (tarfile.TarInfo("d/evil"), b"pwned"))
        self.assertFalse(os.path.exists(os.path.join(self.parent, "evil")))

    def test_fifo_and_device(self):
        for kind in (tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE):
            info = tarfile.TarInfo("dev")
            info.type = kind
            self.hostile((info, None))

    def test_links_are_refused_even_inside(self):
        # mfbatch never writes links: any link member is an attack (or a foreign archive).
        for member in (sym("helper2.py", "helper.py"),
                       sym("pkg/copy.py", "helper.py", tarfile.LNKTYPE)):
            p = self.hostile(member)
            self.assertIn("is not a regular file or directory", p.stderr)

    def test_dirs_and_modes_are_fine(self):
        d = tarfile.TarInfo("pkg")
        d.type = tarfile.DIRTYPE
        x = tarfile.TarInfo("run.sh")
        x.mode = 0o755
        step = ("import os\n"
                "print(os.access('run.sh', os.X_OK), os.access('helper.py', os.X_OK))\n"
                "print(os.path.isdir('pkg'))\n")
        data = make_package({"step.py": step, "helper.py": HELPER}, [(d, None), (x, b"#!/bin/sh\n")])
        p = self.run_bootstrap(self.env(data))
        self.assertEqual((p.returncode, p.stdout), (0, "True False\nTrue\n"), p.stderr)

    def test_an_archive_that_ends_early_is_refused(self):
        # A bad header in the middle makes tarfile stop quietly: the count catches it.
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for name in ("step.py", "a.py", "b.py"):
                data = b"print('hi')\n"
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        tar_bytes = bytearray(raw.getvalue())
        tar_bytes[1024:1024 + 8] = b"\xff" * 8  # a.py's header: its checksum no longer matches
        data = gzip_bytes(bytes(tar_bytes))
        quiet = self.run_bootstrap(self.env(data))
        self.assertEqual(quiet.returncode, 0, "without a count the loss goes unnoticed")
        p = self.run_bootstrap(self.env(data, MFBATCH_PACKAGE_FILES="3"))
        self.assertFailure(p, 122, "ends early")


def gzip_bytes(data):
    import gzip
    return gzip.compress(data)


class EndRecordTest(Base):
    NONCE = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

    def records(self, proc, code, origin, attempt="1"):
        line = "mfbatch-end:v1:%s:%s:%d:%s:" % (self.NONCE, attempt, code, origin)
        self.assertEqual(proc.stdout.splitlines()[-1], line + "stdout", proc.stdout)
        self.assertEqual(proc.stderr.splitlines()[-1], line + "stderr", proc.stderr)

    def test_the_steps_exit_ends_both_pipes(self):
        step = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)\n"
        env = self.env(make_package({"step.py": step}), MFBATCH_END_NONCE=self.NONCE,
                       AWS_BATCH_JOB_ATTEMPT="2")
        p = self.run_bootstrap(env)
        self.assertEqual(p.returncode, 3)
        self.assertEqual(p.stdout.splitlines()[0], "out")
        self.records(p, 3, "step", attempt="2")

    def test_a_bootstrap_failure_says_so(self):
        env = self.env(self.simple(), MFBATCH_PACKAGE_URL="s3://bucket/nope",
                       MFBATCH_END_NONCE=self.NONCE)
        p = self.run_bootstrap(env)
        self.assertEqual(p.returncode, 121, p.stderr)
        self.records(p, 121, "bootstrap")

    def test_a_step_stopped_from_outside_says_stopped(self):
        step = "import time; print('ready', flush=True); time.sleep(120)\n"
        env = self.env(make_package({"step.py": step}), MFBATCH_END_NONCE=self.NONCE)
        proc = subprocess.Popen([sys.executable, "-u", "-c", SOURCE], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
        try:
            self.assertEqual(proc.stdout.readline(), "ready\n")
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=STOP_WAIT)
        finally:
            proc.kill()
            proc.wait()
        self.assertEqual(proc.returncode, 128 + signal.SIGTERM, err)
        self.records(subprocess.CompletedProcess([], 0, "ready\n" + out, err),
                     128 + signal.SIGTERM, "stopped")

    def test_the_stub_writes_records_when_the_image_has_no_python(self):
        env = self.env(self.simple(), MFBATCH_END_NONCE=self.NONCE, PATH="/nonexistent")
        p = subprocess.run(["/bin/sh", "-c", STUB], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
        self.assertEqual(p.returncode, 127, p.stderr)
        self.records(p, 127, "bootstrap")

    def test_no_nonce_no_records(self):
        p = self.run_bootstrap(self.env(self.simple()))
        self.assertNotIn("mfbatch-end", p.stdout + p.stderr)


class StepEnvironmentTest(Base):
    def test_the_step_sees_none_of_the_bootstraps_variables(self):
        step = ("import os, sys\n"
                "print(sorted(k for k in os.environ if k.startswith('MFBATCH_')))\n"
                "print(sys.argv[1:])\n")
        env = self.env(make_package({"step.py": step}), MFBATCH_CPU="2",
                       MFBATCH_DRAIN_QUIET_MS="5", MFBATCH_END_NONCE="abc")
        p = self.run_bootstrap(env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.splitlines()[:2], ["['MFBATCH_CPU']", "[]"])

    def test_china_regions_use_their_own_domain(self):
        self.assertEqual(bootstrap.s3_http_url("b", "k", "cn-north-1"),
                         "https://b.s3.cn-north-1.amazonaws.com.cn/k")
        self.assertEqual(bootstrap.s3_http_url("b.c", "k", "cn-northwest-1"),
                         "https://s3.cn-northwest-1.amazonaws.com.cn/b.c/k")
        self.assertEqual(bootstrap.s3_http_url("b", "k", "eu-west-1"),
                         "https://b.s3.eu-west-1.amazonaws.com/k")


class ArrayAndNodeTest(Base):
    STEP = ("import os, sys\n"
            "print(sys.argv[1:])\n"
            "print(sorted((k, v) for k, v in os.environ.items()\n"
            "             if k.startswith(('MFBATCH_ARRAY', 'MFBATCH_NODE', 'MFBATCH_NUM', 'MFBATCH_MAIN', 'MF_PAR'))))\n")

    def child(self, args_text=None, **extra):
        env = self.env(make_package({"step.py": self.STEP}), args=["--fixed"], **extra)
        if args_text is not None:
            data = args_text.encode()
            FakeS3.objects["/bucket/args.txt"] = data
            env.update(MFBATCH_ARRAY_ARGS_URL="s3://bucket/args.txt",
                       MFBATCH_ARRAY_ARGS_SHA256=sha(data))
        return self.run_bootstrap(env)

    def test_index_from_batch_and_line_from_the_args_file(self):
        p = self.child("a 1\n'b c' 2\nlast\n", MFBATCH_ARRAY_SIZE="3",
                       AWS_BATCH_JOB_ARRAY_INDEX="1", AWS_BATCH_JOB_ID="abc:1")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.splitlines(), [
            "['--fixed', 'b c', '2']",
            "[('MFBATCH_ARRAY_INDEX', '1'), ('MFBATCH_ARRAY_SIZE', '3')]"])

    def test_index_from_the_job_id_suffix_as_moto_gives_no_index(self):
        p = self.child(None, MFBATCH_ARRAY_SIZE="5", AWS_BATCH_JOB_ID="f00-ba4:4")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("('MFBATCH_ARRAY_INDEX', '4')", p.stdout)

    def test_an_array_of_one_is_index_zero(self):
        p = self.child("only\n", MFBATCH_ARRAY_SIZE="1", AWS_BATCH_JOB_ID="f00")
        self.assertEqual(p.stdout.splitlines()[0], "['--fixed', 'only']", p.stderr)

    def test_bad_index_or_args(self):
        self.assertFailure(self.child(None, MFBATCH_ARRAY_SIZE="2", AWS_BATCH_JOB_ARRAY_INDEX="2"),
                           123, "array index")
        self.assertFailure(self.child("one\n", MFBATCH_ARRAY_SIZE="2",
                                      AWS_BATCH_JOB_ARRAY_INDEX="1"), 123, "no line 1")
        env = self.env(make_package({"step.py": self.STEP}), MFBATCH_ARRAY_SIZE="2",
                       AWS_BATCH_JOB_ARRAY_INDEX="0", MFBATCH_ARRAY_ARGS_URL="s3://bucket/x",
                       MFBATCH_ARRAY_ARGS_SHA256=sha(b"other"))
        FakeS3.objects["/bucket/x"] = b"x\n"
        self.assertFailure(self.run_bootstrap(env), 122, "array args")

    def test_node_variables(self):
        p = self.child(None, AWS_BATCH_JOB_NODE_INDEX="2", AWS_BATCH_JOB_NUM_NODES="4",
                       AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS="10.0.0.5")
        self.assertEqual(p.returncode, 0, p.stderr)
        env = dict(eval(p.stdout.splitlines()[1]))
        self.assertEqual((env["MFBATCH_NODE_INDEX"], env["MFBATCH_NUM_NODES"],
                          env["MFBATCH_MAIN_NODE_ADDRESS"], env["MF_PARALLEL_MAIN_IP"]),
                         ("2", "4", "10.0.0.5", "10.0.0.5"))

    def test_the_main_node_gives_its_own_address(self):
        # Batch leaves AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS out on the main node.
        import socket
        try:
            own = socket.gethostbyname(socket.gethostname())
        except OSError:
            own = "127.0.0.1"
        p = self.child(None, AWS_BATCH_JOB_NODE_INDEX="0", AWS_BATCH_JOB_NUM_NODES="4")
        self.assertEqual(p.returncode, 0, p.stderr)
        env = dict(eval(p.stdout.splitlines()[1]))
        self.assertEqual((env["MFBATCH_NODE_INDEX"], env["MFBATCH_NUM_NODES"],
                          env["MFBATCH_MAIN_NODE_ADDRESS"], env["MF_PARALLEL_MAIN_IP"]),
                         ("0", "4", own, own))

    def test_no_node_variables_outside_a_multi_node_job(self):
        p = self.child(None)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.splitlines()[1], "[]")


class socket_port:
    """A localhost port with nothing listening on it."""
    def __enter__(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    unittest.main()
