#!/usr/bin/env bash
# The main job: install what is missing, find an engine (or start a private one with sample
# images), mount it at MOUNTPOINT (default /tmp/imagefs) and show a little of it.
set -euo pipefail
cd "$(dirname "$0")/.."
mnt=${1:-/tmp/imagefs}
engine_dir=/tmp/imagefs-engine
private=unix://$engine_dir/docker.sock

bash scripts/setup.sh
host=${DOCKER_HOST:-unix:///var/run/docker.sock}
if python3 scripts/private_engine.py ping "$host"; then
  echo "demo: using the engine at $host"
elif python3 scripts/private_engine.py ping "$private"; then
  echo "demo: no engine answers at $host; reusing the private one in $engine_dir (from an earlier run)"
  host=$private
else
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
        | grep -v '^\./localhost:[0-9]*$' | sort | head -1)
if [[ -n $first ]]; then
  image="$mnt/${first#./}"
  echo "\$ ls -l $image"
  ls -l "$image"
  echo "(An export.tar listed as 0 bytes, mode 0440, has not been exported yet: its size is unknown until the"
  echo " engine has exported the image once. Opening it starts that export; from then on, also after a"
  echo " remount, it shows its exact size. GNU tar and cp read it whole all the same.)"
  echo "\$ jq '{Id, RepoTags, Created, Size}' $image/inspect"
  jq '{Id, RepoTags, Created, Size}' "$image/inspect"
fi
echo
echo "imagefs is mounted at $mnt (engine $DOCKER_HOST). Unmount: $PWD/.venv/bin/imagefs umount $mnt"
if [[ $host == "$private" ]]; then
  echo "Stop the private engine afterwards: python3 $PWD/scripts/private_engine.py stop $engine_dir"
fi
