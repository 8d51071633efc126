#!/usr/bin/env bash
# Install what imagefs needs on Debian 12 (as root), then the project into .venv. Idempotent.
#   bash scripts/setup.sh            # FUSE, build tools, jq (the README's examples), zstd (zstd layers), the venv
#   bash scripts/setup.sh --engine   # also Debian's docker.io and busybox-static (a private engine)
#   bash scripts/setup.sh --test     # also what the tests drive: docker.io, busybox-static, rsync, pv,
#                                    # openssh-server and openssl (ssh:// and TLS engines), podman,
#                                    # and Debian 13's dockerd 26 unpacked into $IMAGEFS_DOCKER26
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(fuse3 libfuse3-dev pkg-config gcc python3 python3-dev python3-venv curl ca-certificates jq zstd)
case "${1:-}" in
  --engine) pkgs+=(docker.io busybox-static) ;;
  --test) pkgs+=(docker.io busybox-static docker-registry rsync pv openssh-server openssl podman) ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ "${1:-}" == --test ]]; then
  bash scripts/setup-docker26.sh
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import imagefs, pyfuse3, pytest, hypothesis" 2>/dev/null \
   || [[ pyproject.toml -nt .venv/.installed ]]; then
  echo "setup: installing imagefs into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi
