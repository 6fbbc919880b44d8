#!/usr/bin/env bash
# Create (or reuse) the Python venv that runs the moto-based e2e harness.
#
#   tests/moto/setup-venv.sh            -> venv at <repo>/target/moto-venv
#   MFBATCH_MOTO_VENV=/x setup-venv.sh  -> venv at /x
#   MFBATCH_PYTHON=python3.12 ...       -> base interpreter (default: python3)
#
# Idempotent: when the venv already holds exactly what requirements.txt pins
# (checked via a stamp file + moto's installed version) it does nothing.
# The LAST line printed on stdout is the venv's python path; everything else
# goes to stderr, so callers can do: PY=$(tests/moto/setup-venv.sh | tail -n1)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${MFBATCH_MOTO_VENV:-$repo/target/moto-venv}"
base_python="${MFBATCH_PYTHON:-python3}"
reqs="$here/requirements.txt"
want_moto="5.2.5"
stamp="$venv/.mfbatch-moto-requirements"
py="$venv/bin/python"

say() { echo "setup-venv: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Fast path: stamp matches requirements.txt and moto imports at the pinned version.
if [[ -x "$py" && -f "$stamp" ]] && cmp -s "$stamp" "$reqs" &&
   [[ "$("$py" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)" == "$want_moto" ]]; then
    echo "$py"
    exit 0
fi

command -v "$base_python" >/dev/null 2>&1 ||
    die "'$base_python' not found; install Python 3.9+ or set MFBATCH_PYTHON"

if [[ ! -x "$py" ]]; then
    say "creating venv at $venv"
    mkdir -p "$(dirname "$venv")"
    "$base_python" -m venv "$venv" >&2 ||
        die "'$base_python -m venv $venv' failed (on Debian: apt-get install python3-venv)"
fi

say "installing pinned moto[server]==$want_moto and deps (from $reqs)"
"$py" -m pip install --quiet --disable-pip-version-check --no-input -r "$reqs" >&2 ||
    die "pip install -r $reqs failed (is PyPI reachable?)"

got="$("$py" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true)"
[[ "$got" == "$want_moto" ]] || die "venv has moto '$got', expected $want_moto"
"$py" -c 'import boto3, docker, flask, moto.server' ||
    die "venv is missing boto3/docker/flask/moto.server after install"

cp "$reqs" "$stamp"
say "ready"
echo "$py"
