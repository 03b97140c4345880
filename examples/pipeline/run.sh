#!/usr/bin/env bash
# The whole workflow on the pipeline example: record a trusted run, enforce the
# manifest it froze, then tamper with one artifact and watch it be refused.
#   bash examples/pipeline/run.sh [WORKDIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-pickleguard-demo}"
python="${PYTHON:-python}"
mkdir -p "$work" && cd "$work"

echo "\$ python make_artifacts.py artifacts"
"$python" "$here/make_artifacts.py" artifacts

echo; echo "\$ pickleguard record -o pickleguard.toml -- python app.py artifacts"
"$python" -m pickleguard record -o pickleguard.toml -- "$python" "$here/app.py" artifacts

echo; echo "\$ pickleguard run --manifest pickleguard.toml -- python app.py artifacts"
"$python" -m pickleguard run --manifest pickleguard.toml -- "$python" "$here/app.py" artifacts

echo; echo "\$ python make_artifacts.py artifacts --tamper"
"$python" "$here/make_artifacts.py" artifacts --tamper

echo; echo "\$ pickleguard run --manifest pickleguard.toml -- python app.py artifacts"
set +e
"$python" -m pickleguard run --manifest pickleguard.toml -- "$python" "$here/app.py" artifacts 2>&1 \
    | grep -E "NoPickleError|^parent|^workers|^report" | head -n 2
status=${PIPESTATUS[0]}
set -e
echo "(exit status $status)"
if [ -e artifacts/PWNED ]; then
    echo "error: the tampered artifact ran" >&2
    exit 1
fi
echo "the tampered shard was refused in the worker that loaded it; its payload never ran"
echo "the manifest is in $work/pickleguard.toml"
[ "$status" -ne 0 ]
