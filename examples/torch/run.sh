#!/usr/bin/env bash
# The README's torch example: pin a checkpoint, load it under enforcement, and see a
# swapped one refused. Runs in WORKDIR (default: ./pickleguard-torch-demo).
#   bash examples/torch/run.sh [WORKDIR]
# Hashes differ from run to run (torch.save writes a random serialization id), and
# the manifest's path is absolute in the denial: both are shortened to "…", so the
# output is what the README shows, on any machine.
set -euo pipefail
python="${PYTHON:-python}"
work="${1:-pickleguard-torch-demo}"
mkdir -p "$work" && cd "$work"
rm -f pickleguard.toml .pickleguard.toml.lock model.pt

shorten() { sed -E -e "s#$PWD/##g" -e 's/[0-9a-f]{64}/…/g'; }
show() { printf '$ %s\n' "$1"; }

show "python -c \"import torch; torch.save({'w': torch.ones(2)}, 'model.pt')\""
"$python" -c "import torch; torch.save({'w': torch.ones(2)}, 'model.pt')"
show "pickleguard pin pickleguard.toml model.pt"
"$python" -m pickleguard pin pickleguard.toml model.pt 2>&1 | shorten
show "PICKLEGUARD_MANIFEST=pickleguard.toml python -c \"import torch; print(torch.load('model.pt'))\""
PICKLEGUARD_MANIFEST=pickleguard.toml "$python" -c "import torch; print(torch.load('model.pt'))"
show "python -c \"import torch; torch.save({'w': torch.zeros(2)}, 'model.pt')\"   # swapped"
"$python" -c "import torch; torch.save({'w': torch.zeros(2)}, 'model.pt')"
show "PICKLEGUARD_MANIFEST=pickleguard.toml python -c \"import torch; torch.load('model.pt')\""
set +e
PICKLEGUARD_MANIFEST=pickleguard.toml "$python" -c "import torch; torch.load('model.pt')" 2>&1 \
    | grep -E "^(pickleguard\.errors\.NoPickleError|hint):" | shorten
status=${PIPESTATUS[0]}
set -e
echo "(exit status $status)"
[ "$status" -eq 1 ]
