#!/usr/bin/env bash
# The main job: install what is missing, find an engine (or start a private one with sample
# images), mount it at MOUNTPOINT (default /tmp/imagefs) and show a little of it.
set -euo pipefail
cd "$(dirname "$0")/.."
mnt=${1:-/tmp/imagefs}
engine_dir=/tmp/imagefs-engine

bash scripts/setup.sh
host=${DOCKER_HOST:-unix:///var/run/docker.sock}
if ! python3 scripts/private_engine.py ping "$host"; then
  echo "demo: no engine answers at $host; starting a private one in $engine_dir"
  bash scripts/setup.sh --engine
  host=$(python3 scripts/private_engine.py start "$engine_dir" --samples)
fi
export DOCKER_HOST=$host

mkdir -p "$mnt"
if mountpoint -q "$mnt"; then .venv/bin/imagefs umount "$mnt"; fi
.venv/bin/imagefs mount "$mnt"

echo "\$ ls -l $mnt"
ls -l "$mnt"
first=$(cd "$mnt" && find . -mindepth 1 -maxdepth 4 -type d \( -name '*:*' -o -name '*@*' \) -prune -print \
        | grep -v '^\./localhost:[0-9]*$' | head -1)
if [[ -n $first ]]; then
  echo "\$ ls -l $mnt/${first#./}"
  ls -l "$mnt/${first#./}"
  echo "\$ cat $mnt/${first#./}/inspect | head -15"
  head -15 "$mnt/${first#./}/inspect"
fi
echo
echo "imagefs is mounted at $mnt (engine $DOCKER_HOST). Unmount: $PWD/.venv/bin/imagefs umount $mnt"
if [[ $host == "unix://$engine_dir/docker.sock" ]]; then
  echo "Stop the private engine afterwards: python3 $PWD/scripts/private_engine.py stop $engine_dir"
fi
