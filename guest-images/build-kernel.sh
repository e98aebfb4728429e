#!/bin/sh
# Build a Debian linux-source package with a small configuration, once:
#   build-kernel.sh FRAGMENT CACHE [PACKAGE[=VERSION] [PATCH...]]
#     -> CACHE/kernel-src/PACKAGE            (no patches; a build tree)
#     -> CACHE/kernel-src/PACKAGE+NAME[+...] (each PATCH applied with patch -p1, NAME its
#                                             file name without .patch; LOCALVERSION +NAME...)
# PACKAGE is linux-source-6.1 unless given; VERSION pins the package version (the deb is
# downloaded into CACHE/debs once, with apt-get download, and kept).
# The tree is reused while the fragment, the source package and the patches are the same; a
# patched tree starts as a copy of the same package's unpatched tree when that one is built
# with the same fragment (make then rebuilds only what the patches touch). Test it with
#   mce-orchestrator run --kernel CACHE/kernel-src/linux-source-6.1 SCENARIO
# make kernel-from-source runs this with nice -n 19. JOBS (default: nproc) is make's -j.
set -eu
fragment=$(realpath "$1")
cache=$(realpath "$2")
spec=${3:-linux-source-6.1}
shift 2
[ $# -gt 0 ] && shift
package=${spec%%=*}
version=
[ "$package" = "$spec" ] || version=${spec#*=}
case "$package" in
    linux-source-[0-9]*) ;;
    *) echo "build-kernel.sh: not a linux-source package: $package" >&2; exit 2;;
esac
patches=
names=
for patch in "$@"; do
    [ -f "$patch" ] || { echo "build-kernel.sh: no patch $patch" >&2; exit 2; }
    name=$(basename "$patch" .patch)
    case "$name" in
        *[!A-Za-z0-9._-]*) echo "build-kernel.sh: patch name $name: letters, digits, . _ - only" >&2; exit 2;;
    esac
    patches="$patches $(realpath "$patch")"
    names="$names+$name"
done
jobs=${JOBS:-$(nproc)}
mkdir -p "$cache/debs" "$cache/kernel-src"
cd "$cache/debs"

# The newest downloaded deb of the package (of VERSION when given), else download it.
find_deb() {
    for f in $(ls "${package}"_*_all.deb 2>/dev/null | sort -V -r); do
        if [ -z "$version" ] || [ "$(dpkg-deb -f "$f" Version)" = "$version" ]; then
            echo "$f"
            return 0
        fi
    done
}
deb=$(find_deb)
if [ -z "$deb" ]; then
    apt-get -q -o APT::Sandbox::User=root download "${package}${version:+=$version}"
    deb=$(find_deb)
fi
[ -n "$deb" ] || { echo "build-kernel.sh: no deb of $spec" >&2; exit 1; }

base="$cache/kernel-src/$package"
tree="$base$names"
stamp_of() {
    # fragment, deb, then each patch's digest: a tree is reused only for the same three.
    printf '%s %s' "$(sha256sum "$fragment" | cut -c1-16)" "$deb"
    for p in "$@"; do printf ' %s' "$(sha256sum "$p" | cut -c1-16)"; done
    echo
}
# shellcheck disable=SC2086 # $patches: paths from realpath, split on the spaces put between them
want=$(stamp_of $patches)
if [ -f "$tree/arch/x86/boot/bzImage" ] && [ "$(cat "$tree/.mceorch-stamp" 2>/dev/null)" = "$want" ]; then
    echo "kernel: cached in $tree"
    exit 0
fi
start=$(date +%s)
rm -rf "$tree" "$cache/kernel-src/unpack"
if [ -n "$patches" ] && [ -f "$base/arch/x86/boot/bzImage" ] && [ "$(cat "$base/.mceorch-stamp" 2>/dev/null)" = "$(stamp_of)" ]; then
    echo "kernel: starting from the unpatched build $base"
    cp -a "$base" "$tree"
    rm -f "$tree/.mceorch-stamp"
    cd "$tree"
else
    echo "kernel: unpacking $deb"
    mkdir "$cache/kernel-src/unpack"
    dpkg-deb -x "$deb" "$cache/kernel-src/unpack"
    tar -C "$cache/kernel-src/unpack" -xf "$cache/kernel-src/unpack/usr/src/$package.tar.xz"
    mv "$cache/kernel-src/unpack/$package" "$tree"
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
fi
for patch in $patches; do
    echo "kernel: applying $patch"
    patch -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch -i "$patch" || {
        echo "kernel: $patch does not apply to $package ($deb)" >&2
        exit 1
    }
done
echo "kernel: building bzImage with $jobs jobs"
make -s -j"$jobs" LOCALVERSION="$names" bzImage
echo "$want" > .mceorch-stamp
echo "kernel: built in $(( $(date +%s) - start )) s: $tree/arch/x86/boot/bzImage ($(cat include/config/kernel.release))"
