#!/bin/sh
# Build Debian's linux-source-6.1 with a small configuration, once:
#   build-kernel.sh FRAGMENT CACHE   ->   CACHE/kernel-src/linux-source-6.1 (a build tree)
# The tree is reused while the fragment and the source package are the same; test it with
#   mce-orchestrator run --kernel CACHE/kernel-src/linux-source-6.1 SCENARIO
# make kernel-from-source runs this with nice -n 19.
set -eu
fragment=$(realpath "$1")
cache=$(realpath "$2")
mkdir -p "$cache/debs" "$cache/kernel-src"
cd "$cache/debs"
deb=$(ls linux-source-6.1_*_all.deb 2>/dev/null | tail -n 1 || true)
if [ -z "$deb" ]; then
    apt-get -q -o APT::Sandbox::User=root download linux-source-6.1
    deb=$(ls linux-source-6.1_*_all.deb | tail -n 1)
fi
tree="$cache/kernel-src/linux-source-6.1"
want="$(sha256sum "$fragment" | cut -c1-16) $deb"
if [ -f "$tree/arch/x86/boot/bzImage" ] && [ "$(cat "$tree/.mceorch-stamp" 2>/dev/null)" = "$want" ]; then
    echo "kernel: cached in $tree"
    exit 0
fi
start=$(date +%s)
rm -rf "$tree" "$cache/kernel-src/unpack"
echo "kernel: unpacking $deb"
dpkg-deb -x "$deb" "$cache/kernel-src/unpack"
tar -C "$cache/kernel-src" -xf "$cache/kernel-src/unpack/usr/src/linux-source-6.1.tar.xz"
rm -rf "$cache/kernel-src/unpack"
cd "$tree"
echo "kernel: configuring (tinyconfig + $fragment)"
make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig
# olddefconfig drops an option whose dependencies are unmet, silently: say which.
lost=$(grep '^CONFIG_.*=y$' "$fragment" | while read -r line; do grep -qx "$line" .config || echo "${line%=y}"; done)
if [ -n "$lost" ]; then
    echo "kernel: the configuration lost: $(echo $lost)" >&2
    exit 1
fi
echo "kernel: building bzImage with $(nproc) jobs"
make -s -j"$(nproc)" bzImage
echo "$want" > .mceorch-stamp
echo "kernel: built in $(( $(date +%s) - start )) s: $tree/arch/x86/boot/bzImage ($(cat include/config/kernel.release))"
