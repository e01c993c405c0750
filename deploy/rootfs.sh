#!/usr/bin/env bash
# The files of the container image's final stage, as a directory tree:
#
#   bash deploy/rootfs.sh DEST BINARY
#
# DEST/usr/local/bin/fxbridge    the static binary (scripts/dist.sh)
# DEST/etc/ssl/certs/ca-certificates.crt   CA roots, for mqtts:// and https:// (Debian's bundle)
# DEST/etc/passwd, DEST/etc/group          the non-root user fxbridge, 65532:65532
# DEST/home/fxbridge             its home: the plugin compile cache (~/.cache/fxbridge)
#                                and the session state (~/.local/state/fxbridge)
# DEST/tmp                       1777
#
# deploy/Dockerfile's build stage runs this into /rootfs and its final stage
# copies that; scripts/empty-root-demo.sh runs it too and then applies the
# final stage's COPY lines, read from the Dockerfile, to build the root it
# runs `fxbridge demo` in. One list of files for both.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: rootfs.sh DEST BINARY" >&2; exit 2; }
dest="$1" bin="$2"
CA=/etc/ssl/certs/ca-certificates.crt
if [[ ! -s "$CA" ]]; then
  SUDO=""
  [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ca-certificates
fi
rm -rf "$dest"
mkdir -p "$dest/usr/local/bin" "$dest/etc/ssl/certs" "$dest/home/fxbridge" "$dest/tmp"
install -m 0755 "$bin" "$dest/usr/local/bin/fxbridge"
install -m 0644 "$CA" "$dest/etc/ssl/certs/ca-certificates.crt"
echo 'fxbridge:x:65532:65532:fxbridge:/home/fxbridge:/sbin/nologin' >"$dest/etc/passwd"
echo 'fxbridge:x:65532:' >"$dest/etc/group"
chmod 0644 "$dest/etc/passwd" "$dest/etc/group"
chmod 1777 "$dest/tmp"
chmod 0755 "$dest/home/fxbridge"
