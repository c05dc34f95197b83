#!/usr/bin/env bash
# Builds the node image from a binary built here, with no registry (FROM scratch):
#
#   deploy/container/build-local.sh [BINARY] [TAG]
#
# BINARY defaults to target/release/switchboard (`cargo build --release --bin
# switchboard` first), TAG to switchboard:local. The binary is stripped into a staging
# directory with the shared libraries `ldd` lists (and the dynamic loader) at their
# paths, an /etc/passwd and /etc/group for the user switchboard (10001), and its home
# with the data dir (made its own by the recipe's COPY --chown, so no root is needed
# here); then `podman build --format docker` (the HEALTHCHECK is
# kept: OCI images drop it) runs Containerfile.local on it. Set CONTAINER_TOOL to
# "docker" to use Docker, or to a podman command with global flags, e.g.
# "podman --storage-driver vfs" where overlayfs is not available.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/release/switchboard}
tag=${2:-switchboard:local}
read -r -a tool <<<"${CONTAINER_TOOL:-podman}"

[[ -x $bin ]] || { echo "no binary at $bin: cargo build --release --bin switchboard" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
fs=$ctx/rootfs
mkdir -p "$fs/usr/local/bin" "$fs/etc" "$fs/tmp" "$ctx/home/data"
chmod 0700 "$ctx/home/data"
strip -o "$fs/usr/local/bin/switchboard" "$bin"
# Every library the binary loads, and the loader, at the path it is loaded from.
if ldd "$bin" | grep -q 'not found'; then
  echo "$bin needs libraries this machine lacks:" >&2; ldd "$bin" | grep 'not found' >&2; exit 1
fi
ldd "$bin" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
  mkdir -p "$fs$(dirname "$lib")"
  cp -L "$lib" "$fs$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nswitchboard:x:10001:10001::/var/lib/switchboard:/sbin/nologin\n' >"$fs/etc/passwd"
printf 'root:x:0:\nswitchboard:x:10001:\n' >"$fs/etc/group"
chmod 1777 "$fs/tmp"
cp "$here/Containerfile.local" "$ctx/Containerfile"
build=(build)
[[ $(basename "${tool[0]}") == podman ]] && build+=(--format docker)
"${tool[@]}" "${build[@]}" -t "$tag" -f "$ctx/Containerfile" "$ctx"
