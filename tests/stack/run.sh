#!/usr/bin/env bash
# Lint stack/mfbatch.yaml with cfn-lint and deploy it on moto's CloudFormation.
#
#   tests/stack/run.sh                  -> venv from tests/moto/setup-venv.sh (created if needed)
#   tests/stack/run.sh /path/to/python  -> that interpreter (needs boto3, moto[server], cfn-lint)
#   tests/stack/run.sh "" -k fargate    -> extra arguments go to unittest
#
# cfn-lint and moto are the versions pinned in tests/moto/requirements.txt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${1:-}"
[[ $# -gt 0 ]] && shift
if [[ -z "$py" ]]; then
    py="$("$here/../moto/setup-venv.sh" | tail -n1)"
fi
exec "$py" "$here/test_template.py" -v "$@"
