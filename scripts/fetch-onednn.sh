#!/bin/sh
# Puts oneDNN's shared library (Debian's libdnnl2) and the OpenCL loader it links against
# into the folder $1, for the fused CPU engine of crossentropy.losses.linear_cross_entropy
# (src/crossentropy/losses/_native.py looks for it in <sys.prefix>/lib). Needs apt-get and
# dpkg-deb (Debian, Ubuntu); anywhere else it says so and fails, and the engine stays off.
set -eu
mkdir -p "$1"
dest=$(cd "$1" && pwd)
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || { echo "fetch-onednn: $tool not found" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
packages="libdnnl2 ocl-icd-libopencl1"
# shellcheck disable=SC2086
if ! apt-get download $packages >download.log 2>&1; then
    # The package lists may be missing on a fresh machine (refreshing them needs root).
    apt-get update -qq >>download.log 2>&1 || true
    # shellcheck disable=SC2086
    apt-get download $packages >>download.log 2>&1 || {
        echo "fetch-onednn: apt-get download $packages failed:" >&2
        tail -n 3 download.log >&2
        exit 1
    }
fi
for deb in ./*.deb; do
    dpkg-deb -x "$deb" root
done

for name in libdnnl.so.2 libOpenCL.so.1; do
    found=$(find root -name "$name" | head -n 1)
    [ -n "$found" ] || { echo "fetch-onednn: $name not in the packages" >&2; exit 1; }
    cp -L "$found" "$dest/$name"
done
echo "fetch-onednn: $(ls "$dest"/libdnnl.so.* | head -n 1) installed"
