#!/usr/bin/env bash
# Debian 13's dockerd 26 (docker.io, containerd, docker-cli), unpacked privately for the engine-matrix tests (as root).
#   bash scripts/setup-docker26.sh     # idempotent: does nothing once $IMAGEFS_DOCKER26/usr/sbin/dockerd exists
# Debian 12 has no newer dockerd than 20.10; Debian 13's runs on it with its own usr/bin (containerd 1.7)
# first on PATH. The packages come through apt from a sources list of its own that names this machine's
# Debian mirror with suite trixie: the system's sources, lists and installed packages are left alone.
set -euo pipefail
dest=${IMAGEFS_DOCKER26:-/var/cache/imagefs-test/docker26}
[[ -x $dest/usr/sbin/dockerd && -x $dest/usr/bin/docker ]] && exit 0

# The main archive of this machine's own sources (deb822 or one-line), not its security archive.
. /etc/os-release
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v RS= -v suite="$VERSION_CODENAME" '
  $0 ~ "(^|\n)Suites:[^\n]*[ \t]" suite "([ \t]|\n|$)" && match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/) {
    uri = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[ \t]*/, "", uri); print uri; exit }' || true)
if [[ -z $mirror ]]; then
  mirror=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list 2>/dev/null |
    awk -v suite="$VERSION_CODENAME" '$1 == "deb" && $3 == suite { print $2; exit }' || true)
fi
[[ -n $mirror ]] || { echo "setup-docker26: no Debian mirror for $VERSION_CODENAME in /etc/apt" >&2; exit 1; }

echo "setup: fetching Debian 13's docker.io, containerd and docker-cli into $dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$work/sources.list"
apt=(apt-get -qq -o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=-
     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
"${apt[@]}" update
(cd "$work/debs" && "${apt[@]}" download docker.io containerd docker-cli)
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.part"
for deb in "$work"/debs/*.deb; do
  dpkg -x "$deb" "$dest.part"
done
"$dest.part/usr/sbin/dockerd" --version
rm -rf "$dest"
mv -T "$dest.part" "$dest"
