#!/usr/bin/env bash
# Prepare this machine to run rpi5/aarch64 artifacts under qemu-user (edgert.targets.qemu,
# tests/test_qemu_rpi5.py):
#   1. qemu-user and gcc-aarch64-linux-gnu from apt, when missing (needs root on Debian);
#   2. the cached aarch64 Python + numpy + TVM runtime environment under
#      $EDGERT_CACHE/aarch64 (default ~/.cache/edgert/aarch64): about 15 s and 150 MB of
#      downloads the first time, nothing to do when it is already there.
# Run it with edgert installed in the active Python (it mirrors that Python's TVM versions);
# PYTHON overrides which Python is used. Exit status 0 when the environment is ready.
set -euo pipefail
PY=${PYTHON:-python3}
need=()
command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
# the C library's start files and headers, which linking a shared library needs (a Recommends
# of gcc-aarch64-linux-gnu, so --no-install-recommends alone leaves the compiler unable to link)
[ -e /usr/aarch64-linux-gnu/lib/crti.o ] || need+=(libc6-dev-arm64-cross)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        timeout 300 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 600 \
            apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "error: missing ${need[*]}; install with: apt-get install ${need[*]}" >&2
        exit 1
    fi
fi
# the cross compiler must link a shared library (what every rpi5 artifact is)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo 'int edgert_probe(void) { return 1; }' > "$work/probe.c"
if ! aarch64-linux-gnu-gcc -shared -fPIC -o "$work/probe.so" "$work/probe.c"; then
    echo "error: aarch64-linux-gnu-gcc cannot link a shared library" \
         "(apt-get install libc6-dev-arm64-cross)" >&2
    exit 1
fi
"$PY" -m edgert.targets.qemu
