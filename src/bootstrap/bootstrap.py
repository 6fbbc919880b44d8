"""mfbatch bootstrap: fetch, verify, unpack and run one step. Stdlib, Py3.8+,
run as `python -u -c "$MFBATCH_BOOTSTRAP"`. Env: MFBATCH_PACKAGE_URL (s3://,
file://), MFBATCH_PACKAGE_SHA256, MFBATCH_PACKAGE_FILES (regular files in it),
MFBATCH_SCRIPT, MFBATCH_ARGS (JSON list), MFBATCH_WORKDIR_PARENT,
MFBATCH_END_NONCE, MFBATCH_BOOTSTRAP_RETRY_BASE_SECONDS (1),
MFBATCH_TASK_HEARTBEAT_URL + METAFLOW_SERVICE_HEADERS (Metaflow task heartbeat),
METAFLOW_S3_ENDPOINT_URL, AWS_REGION and the usual AWS credential sources.
Arrays: MFBATCH_ARRAY_SIZE, MFBATCH_ARRAY_ARGS_URL/_SHA256 (child i appends
line i, shell-split, to its args). The step sees MFBATCH_ARRAY_INDEX/_SIZE,
and on multi-node jobs MFBATCH_NODE_INDEX, MFBATCH_NUM_NODES,
MFBATCH_MAIN_NODE_ADDRESS (and Metaflow's MF_PARALLEL_*).

Exit: the step's code, 128+N if it died by signal N; before it runs:
121 download failed (403/404, retries spent); 122 package corrupt (sha256, not
tar.gz, ends early, member not a file or dir); 123 bad env (MFBATCH_*, no such
script); 128+N signal N; 127 no python (sh stub); 1 bootstrap bug (traceback).
With MFBATCH_END_NONCE set, the last line on stdout and on stderr is the end
record `mfbatch-end:v1:NONCE:ATTEMPT:CODE:ORIGIN:stdout|stderr`, so mfbatch
knows the output is complete and who chose the code: ORIGIN is step,
bootstrap, or stopped (the container was told to stop; only Batch knows why).
"""
import hmac, json, os, random, re, shlex, shutil, signal, socket, subprocess, sys, tarfile
import tempfile, time, zlib
from hashlib import sha256
from http.client import HTTPException
from urllib import parse, request
from urllib.error import HTTPError

NETERR = (OSError, HTTPException)  # URLError and timeouts are OSErrors
_child, _held = [], []  # the running step; signals held while it starts
_stopped = []  # stop signals forwarded to the step: its exit is not its own
STEP_VARS = ("MFBATCH_CPU", "MFBATCH_MEMORY_MIB", "MFBATCH_LOCAL_JOB_ID")  # for the step


class Fail(Exception):
    """A failure before the step runs: print one line, exit with `code`."""
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


def log(msg):
    sys.stderr.write("mfbatch-bootstrap: %s\n" % str(msg).replace("\n", " "))
    sys.stderr.flush()


def _get(url, headers, method="GET", timeout=2):
    req = request.Request(url, headers=headers, method=method)  # no proxy: link-local
    with request.build_opener(request.ProxyHandler({})).open(req, timeout=timeout) as r:
        return r.read().decode()


def credentials(env):
    """(key, secret, token) from env, ECS, or IMDSv2; else LookupError."""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                env.get("AWS_SESSION_TOKEN"))
    rel = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    uri = "http://169.254.170.2" + rel if rel else env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    try:
        if uri:
            tok = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
            doc = _get(uri, {"Authorization": tok} if tok else {}, timeout=5)
        elif env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
            raise LookupError("none in env, IMDS disabled")
        else:
            base = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                    or "http://169.254.169.254").rstrip("/") + "/latest/"
            hdr = {"X-aws-ec2-metadata-token": _get(
                base + "api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, "PUT")}
            path = base + "meta-data/iam/security-credentials/"
            doc = _get(path + (_get(path, hdr).split() or ["?"])[0], hdr)
        d = json.loads(doc)
        return d["AccessKeyId"], d["SecretAccessKey"], d.get("Token")
    except NETERR + (ValueError, KeyError) as e:
        raise LookupError("%s: %s" % ("ECS" if uri else "IMDS", e))


def sign(method, url, headers, creds, region, now=None, service="s3"):
    """SigV4: `headers` (all signed; need x-amz-content-sha256) plus host,
    x-amz-date, authorization. `url` has an encoded path and no query."""
    key, secret, token = creds
    date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    u = parse.urlsplit(url)
    h = {k.lower(): str(v).strip() for k, v in headers.items()}
    h.update({"host": u.netloc, "x-amz-date": date})
    if token:
        h["x-amz-security-token"] = token
    names = sorted(h)
    signed = ";".join(names)
    creq = "\n".join([method, u.path or "/", "", "".join(k + ":" + h[k] + "\n" for k in names),
                      signed, h["x-amz-content-sha256"]])
    scope = "/".join([date[:8], region, service, "aws4_request"])
    k = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        k = hmac.new(k, part.encode(), sha256).digest()
    sts = "\n".join(["AWS4-HMAC-SHA256", date, scope, sha256(creq.encode()).hexdigest()])
    h["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        key, scope, signed, hmac.new(k, sts.encode(), sha256).hexdigest())
    return h


def s3_http_url(bucket, key, region, endpoint=None):
    key = parse.quote(key, safe="/")  # S3 rules: keep '/' and unreserved only
    if endpoint:
        return "%s/%s/%s" % (endpoint.rstrip("/"), bucket, key)
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    if "." in bucket:  # a dotted name breaks the TLS wildcard: path style
        return "https://s3.%s.%s/%s/%s" % (region, domain, bucket, key)
    return "https://%s.s3.%s.%s/%s" % (bucket, region, domain, key)


def _copy(src, out):
    """Stream src to out; return its SHA-256."""
    out.seek(0)
    out.truncate()
    h = sha256()
    for chunk in iter(lambda: src.read(1 << 20), b""):
        h.update(chunk)
        out.write(chunk)
    if getattr(src, "length", None):  # http.client returns short bodies quietly
        raise ConnectionError("body cut short by %d bytes" % src.length)
    return h.hexdigest()


def fetch(url, out, env):
    """Download the package into file `out`; return its SHA-256."""
    if url.startswith("file://"):
        path = url[7:]  # mfbatch writes the path as is; else decode a real URI
        if not os.path.isfile(path):
            path = request.url2pathname(parse.urlsplit(url).path)
        try:
            with open(path, "rb") as src:
                return _copy(src, out)
        except OSError as e:
            raise Fail(121, "cannot read %s: %s" % (url, e))
    bucket, _, key = url[5:].partition("/")
    if not (bucket and key):
        raise Fail(123, "bad S3 URL %r" % url)
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    target = s3_http_url(bucket, key, region, env.get("METAFLOW_S3_ENDPOINT_URL"))
    try:
        creds = credentials(env)
    except LookupError as e:
        creds = None
        log("no AWS credentials (%s); trying unsigned" % e)
    delay = float(env.get("MFBATCH_BOOTSTRAP_RETRY_BASE_SECONDS") or 1)
    for n in range(1, 7):
        hdrs = {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
        if creds:  # each try needs a fresh x-amz-date
            hdrs = sign("GET", target, hdrs, creds, region)
        try:
            with request.urlopen(request.Request(target, headers=hdrs), timeout=60) as r:
                return _copy(r, out)
        except HTTPError as e:
            try:
                code = re.findall(r"<Code>([^<]*)", e.read(4096).decode("utf-8", "replace"))
            except NETERR:
                code = None
            why = "HTTP %d %s" % (e.code, code[0] if code else e.reason)
            if e.code < 500 and e.code != 429:  # 403, 404...: retrying won't help
                raise Fail(121, "cannot download %s: %s" % (url, why))
        except NETERR as e:
            why = str(getattr(e, "reason", None) or e) or type(e).__name__
        if n < 6:
            wait = min(20, delay) * random.uniform(0.5, 1)
            log("download try %d failed (%s); retrying in %.1f s" % (n, why, wait))
            time.sleep(wait)
            delay *= 2
    raise Fail(121, "cannot download %s after 6 tries: %s" % (url, why))


def _inside(root, path):
    return path == root or path.startswith(root + os.sep)


def _member(tar, m, root):
    """Create member m under root; 1 if it is a file. Only regular files and
    directories: mfbatch never writes links, so a link is an attack."""
    parts = [p for p in m.name.split("/") if p not in ("", ".")]
    if m.name.startswith("/") or ".." in parts:
        raise Fail(122, "unsafe member name %r" % m.name)
    if not (m.isfile() or m.isdir()):
        raise Fail(122, "member %r is not a regular file or directory" % m.name)
    if not parts:
        return 0
    dest = os.path.join(root, *parts)
    if not _inside(root, os.path.realpath(os.path.dirname(dest))):
        raise Fail(122, "member %r is outside the package" % m.name)
    if m.isdir():
        os.makedirs(dest, exist_ok=True)
        return 0
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.isfile(dest):
        os.unlink(dest)  # later members win
    with tar.extractfile(m) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    os.chmod(dest, 0o755 if m.mode & 0o100 else 0o644)
    return 1


def extract(fileobj, root, expected=None):
    """Unpack a tar.gz by hand: tarfile's filters differ across 3.8-3.13.
    tarfile ends quietly at a bad header, so count the files against
    `expected` (MFBATCH_PACKAGE_FILES): a short archive is refused."""
    root = os.path.realpath(root)
    files = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
            for m in tar:
                files += _member(tar, m, root)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise Fail(122, "cannot unpack package: %s" % e)
    if expected is not None and files != expected:
        raise Fail(122, "package holds %d files, expected %d: it ends early" % (files, expected))


def array_index(env):
    """(index, size) of an array child, else None. Batch sets ARRAY_INDEX on
    children; moto does not, but the child id ends with `:<index>`; an
    "array" of 1 is a plain job, index 0."""
    size = (env.get("MFBATCH_ARRAY_SIZE") or "").strip()
    if not size:
        return None
    index = (env.get("AWS_BATCH_JOB_ARRAY_INDEX") or "").strip()
    if not index:
        job = env.get("AWS_BATCH_JOB_ID") or ""
        index = job.rpartition(":")[2] if ":" in job else "0"
    if not (size.isdigit() and index.isdigit() and int(index) < int(size)):
        raise Fail(123, "bad array index %r of size %r" % (index, size))
    return int(index), int(size)


def array_args(env, parent, index):
    """Child `index`'s line of the --array-args file, as arguments."""
    url, want = env.get("MFBATCH_ARRAY_ARGS_URL"), env.get("MFBATCH_ARRAY_ARGS_SHA256")
    if not url:
        return []
    with tempfile.TemporaryFile(dir=parent) as tmp:
        if fetch(url, tmp, env) != (want or "").strip().lower():
            raise Fail(122, "array args sha256 differs from MFBATCH_ARRAY_ARGS_SHA256")
        tmp.seek(0)
        lines = tmp.read().decode("utf-8", "replace").splitlines()
    if index >= len(lines):
        raise Fail(123, "array args file has no line %d" % index)
    try:
        return shlex.split(lines[index])
    except ValueError as e:
        raise Fail(123, "array args line %d: %s" % (index, e))


def position_env(env, position):
    """What the step is told of its place in an array or a multi-node job."""
    out = {}
    if position:
        out.update(MFBATCH_ARRAY_INDEX=str(position[0]), MFBATCH_ARRAY_SIZE=str(position[1]))
    node, nodes = env.get("AWS_BATCH_JOB_NODE_INDEX"), env.get("AWS_BATCH_JOB_NUM_NODES")
    if node is not None and nodes:
        main = env.get("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS")
        if not main:  # Batch leaves it out on the main node itself
            try:
                main = socket.gethostbyname(socket.gethostname())
            except OSError:
                main = "127.0.0.1"
        out.update(MFBATCH_NODE_INDEX=node, MFBATCH_NUM_NODES=nodes, MFBATCH_MAIN_NODE_ADDRESS=main,
                   MF_PARALLEL_NODE_INDEX=node, MF_PARALLEL_NUM_NODES=nodes, MF_PARALLEL_MAIN_IP=main)
    return out


def prepare(env):
    """Check env, fetch, verify, unpack; return (root, script, args, step vars)."""
    need = ("MFBATCH_PACKAGE_URL", "MFBATCH_PACKAGE_SHA256", "MFBATCH_SCRIPT")
    if not all(env.get(v) for v in need):
        raise Fail(123, "missing " + ", ".join(v for v in need if not env.get(v)))
    url, sha, script = (env[v].strip() for v in need)
    if not re.fullmatch("[0-9a-f]{64}", sha.lower()):
        raise Fail(123, "MFBATCH_PACKAGE_SHA256 is not a hex SHA-256")
    if not url.startswith(("s3://", "file://")):
        raise Fail(123, "MFBATCH_PACKAGE_URL is not s3:// or file://: %r" % url)
    try:
        args = json.loads(env.get("MFBATCH_ARGS") or "[]")
    except ValueError:
        args = None
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise Fail(123, "MFBATCH_ARGS is not a JSON array of strings")
    count = (env.get("MFBATCH_PACKAGE_FILES") or "").strip()
    if count and not count.isdigit():
        raise Fail(123, "MFBATCH_PACKAGE_FILES is not a number")
    expected = int(count) if count else None
    position = array_index(env)
    parent = env.get("MFBATCH_WORKDIR_PARENT") or tempfile.gettempdir()
    try:
        root = tempfile.mkdtemp(prefix="mfbatch-", dir=parent)
        tmp = tempfile.TemporaryFile(dir=parent)
    except OSError as e:
        raise Fail(123, "cannot create work dir: %s" % e)
    try:
        with tmp:
            got = fetch(url, tmp, env)
            if got != sha.lower():
                raise Fail(122, "package sha256 is %s, expected %s" % (got, sha))
            tmp.seek(0)
            extract(tmp, root, expected)
        args += array_args(env, parent, position[0]) if position else []
        path = os.path.realpath(os.path.join(root, script))
        if not (_inside(os.path.realpath(root), path) and os.path.isfile(path)):
            raise Fail(123, "script %r is not in the package" % script)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root, script, args, position_env(env, position)


def _on_signal(signum, _frame):
    _stopped.append(signum)
    if _child:
        _child[0].send_signal(signum)
    elif _held:  # inside Popen: deliver once the step exists
        _held.append(signum)
    else:
        raise Fail(128 + signum, "interrupted by signal %d before the step ran" % signum)


def end_record(code, origin, env):
    """The last line on both pipes: the output is complete, and who chose the code."""
    nonce = env.get("MFBATCH_END_NONCE", "").strip()
    if not re.fullmatch("[0-9A-Za-z_-]{1,128}", nonce):
        return
    attempt = env.get("AWS_BATCH_JOB_ATTEMPT", "").strip()
    line = "mfbatch-end:v1:%s:%s:%d:%s:" % (
        nonce, attempt if attempt.isdigit() else "1", code, origin)
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        try:
            stream.write(line + name + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nobody is reading


def step_env(env, root, extra=None):
    """The step's environment: the bootstrap's own MFBATCH_* removed, so that
    a nested mfbatch run (or the step) never takes them for its own."""
    out = {k: v for k, v in env.items() if not k.startswith("MFBATCH_") or k in STEP_VARS}
    out.update(extra or {})
    out["PYTHONUNBUFFERED"] = "1"
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return out


def heartbeat(env):
    """Metaflow's task heartbeat while the step runs: best effort, silent,
    never affecting the step (a daemon thread; every error is ignored)."""
    url = env.get("MFBATCH_TASK_HEARTBEAT_URL", "").strip()
    if not url.startswith(("http://", "https://")):
        return
    try:
        hdrs = {str(k): str(v) for k, v in json.loads(env.get("METAFLOW_SERVICE_HEADERS") or "{}").items()}
    except (ValueError, AttributeError):
        hdrs = {}
    hdrs["Content-Type"] = "application/json"

    def beat():
        while True:
            wait = 10.0
            try:
                with request.urlopen(request.Request(url, b"{}", hdrs, method="POST"), timeout=5) as r:
                    body = json.loads(r.read(4096).decode() or "{}")
                    body = json.loads(body) if isinstance(body, str) else body
                    wait = min(max(float(body.get("wait_time_in_seconds", 10)), 1.0), 600.0)
            except Exception:  # noqa: BLE001 - the step must never see it
                pass
            time.sleep(wait)
    import threading
    threading.Thread(target=beat, daemon=True).start()


def run():
    """(exit code, "step" | "bootstrap")."""
    t0 = time.monotonic()
    os.environ.pop("MFBATCH_BOOTSTRAP", None)  # the step must not inherit it
    for s in (signal.SIGTERM, signal.SIGINT):  # also: PID 1 ignores unhandled ones
        signal.signal(s, _on_signal)
    try:
        root, script, args, extra = prepare(os.environ)
        _held.append(0)
    except Fail as e:
        log(e)
        return e.code, "bootstrap"
    if os.environ.get("MFBATCH_BOOTSTRAP_VERBOSE"):  # the job's output is the step's alone
        log("package %s ready in %.1f s, running %s" % (
            os.environ["MFBATCH_PACKAGE_SHA256"].strip()[:12], time.monotonic() - t0, script))
    heartbeat(os.environ)
    try:
        _child.append(subprocess.Popen([sys.executable, "-u", script] + args, cwd=root,
                                       env=step_env(os.environ, root, extra)))
        for s in _held[1:]:
            _child[0].send_signal(s)
        rc = _child[0].wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return (128 - rc if rc < 0 else rc), ("stopped" if _stopped else "step")


def main():
    env = dict(os.environ)
    code, origin = 1, "bootstrap"
    try:
        code, origin = run()
    finally:  # a traceback (bootstrap bug) still ends with a record, code 1
        end_record(code, origin, env)
    return code


if __name__ == "__main__":
    sys.exit(main())
