#!/usr/bin/env bash
# Create (or reuse) the Python venv with Metaflow's client and metaflow-local-service, for the
# metadata e2e tests (tests/e2e_metadata.rs).
#
#   tests/metadata/setup-venv.sh             -> venv at <repo>/target/metadata-venv
#   MFBATCH_METADATA_VENV=/x setup-venv.sh   -> venv at /x
#   MFBATCH_PYTHON=python3.12 ...            -> base interpreter (default: python3)
#
# Idempotent (a stamp file equal to requirements.txt). The LAST line on stdout is the venv's
# python; everything else goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${MFBATCH_METADATA_VENV:-$repo/target/metadata-venv}"
base_python="${MFBATCH_PYTHON:-python3}"
reqs="$here/requirements.txt"
stamp="$venv/.mfbatch-metadata-requirements"
py="$venv/bin/python"

say() { echo "setup-venv: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

if [[ -x "$py" && -f "$stamp" ]] && cmp -s "$stamp" "$reqs"; then
    echo "$py"
    exit 0
fi
command -v "$base_python" >/dev/null 2>&1 || die "'$base_python' not found; set MFBATCH_PYTHON"
if [[ ! -x "$py" ]]; then
    say "creating venv at $venv"
    mkdir -p "$(dirname "$venv")"
    "$base_python" -m venv "$venv" >&2 || die "'$base_python -m venv $venv' failed"
fi
say "installing pinned metaflow and metaflow-local-service (from $reqs)"
"$py" -m pip install --quiet --disable-pip-version-check --no-input -r "$reqs" >&2 ||
    die "pip install -r $reqs failed (is PyPI reachable?)"
"$py" -c 'import metaflow, metaflow_local_service' || die "metaflow or metaflow_local_service missing"
cp "$reqs" "$stamp"
say "ready"
echo "$py"
