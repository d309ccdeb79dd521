#!/usr/bin/env bash
# Builds the test QEMU: Debian bookworm's qemu 7.2 source plus our two patches for
# COLO under TCG (qemu-glue/patches/, see qemu-glue/README.md), x86_64-softmmu only.
# Result (cached, keyed by the Debian version and the patches' hash, idempotent):
#   ${COLO_CACHE:-/var/cache/colo-proxy}/qemu-<key>/qemu-system-x86_64
# Usage: qemu-glue/build-qemu.sh [--force | --cached]   Prints the binary's path on its
# last line. --cached: only print it if this patch set is built (exit 3 if not).
# Run the binary with -L /usr/share/qemu -L /usr/share/seabios -L /usr/lib/ipxe/qemu.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${COLO_CACHE:-/var/cache/colo-proxy}"
say() { echo "build-qemu: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get install -y -qq -o DPkg::Lock::Timeout=600 "$@" >/dev/null; }

patches=("$here"/patches/*.patch)
configure_flags=(--target-list=x86_64-softmmu --without-default-features --enable-tcg
                 --enable-replication --enable-trace-backends=log --disable-docs --disable-werror)
# The cache key: the patches and the configure flags.
phash="$( (cat "${patches[@]}"; echo "${configure_flags[*]}") | sha256sum | cut -c1-12)"
# The link to the latest build for this patch set (the Debian version is resolved below).
latest="$cache/qemu-latest-$phash"
if [[ "${1:-}" != "--force" && -x "$latest/qemu-system-x86_64" ]]; then
  [[ "${1:-}" == "--cached" ]] || ln -sfn "$(readlink -f "$latest")" "$cache/qemu-latest"
  say "cached build is up to date: $(readlink -f "$latest") (patches $phash)"
  echo "$latest/qemu-system-x86_64"; exit 0
fi
if [[ "${1:-}" == "--cached" ]]; then
  say "no build for patches $phash in $cache (run qemu-glue/build-qemu.sh)"; exit 3
fi

# Debian's source needs a deb-src line; add one for bookworm if none is configured.
if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  say "adding a bookworm deb-src source (/etc/apt/sources.list.d/colo-proxy-src.sources)"
  cat > /etc/apt/sources.list.d/colo-proxy-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi
deps=(ninja-build meson libglib2.0-dev libpixman-1-dev libfdt-dev flex bison pkg-config gcc make
      python3-venv dpkg-dev xz-utils patch)
missing=()
for d in "${deps[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if ((${#missing[@]})); then
  say "installing build dependencies: ${missing[*]}"
  apt_install "${missing[@]}" || { apt-get update -qq; apt_install "${missing[@]}"; }
fi

srcdir="$cache/qemu-src"
mkdir -p "$srcdir"
chmod 755 "$srcdir"   # apt-get source downloads as _apt
version="$(apt-cache showsrc qemu 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -1)"
[[ -n "$version" ]] || { apt-get update -qq; version="$(apt-cache showsrc qemu | awk '/^Version:/ {print $2}' | sort -V | tail -1)"; }
[[ -n "$version" ]] || { say "apt-cache showsrc qemu found nothing: is a deb-src line configured?"; exit 2; }
upstream="${version#*:}"
key="${upstream//[^A-Za-z0-9.]/_}-$phash"
out="$cache/qemu-$key"
if [[ "${1:-}" != "--force" && -x "$out/qemu-system-x86_64" ]]; then
  ln -sfn "$out" "$latest"
  ln -sfn "$out" "$cache/qemu-latest"
  say "cached build is up to date: $out"
  echo "$latest/qemu-system-x86_64"; exit 0
fi

dsc="$srcdir/qemu_${upstream}.dsc"
if [[ ! -f "$dsc" ]]; then
  say "downloading Debian's qemu $version source (apt-get source)"
  (cd "$srcdir" && apt-get source -qq --download-only "qemu=$version")
fi
build="$(mktemp -d "$cache/qemu-build.XXXXXX")"
trap 'rm -rf "$build"' EXIT
say "unpacking the source with Debian's patches into $build"
dpkg-source -x --no-check "$dsc" "$build/src" >/dev/null
for p in "${patches[@]}"; do
  say "applying $(basename "$p")"
  patch -p1 -d "$build/src" --quiet < "$p"
done
say "configuring (x86_64-softmmu, TCG, replication; about 5-6 min to build on 2 cores)"
mkdir -p "$build/src/build"
(cd "$build/src/build" && ../configure "${configure_flags[@]}" >"$build/configure.log" 2>&1) || { tail -30 "$build/configure.log" >&2; exit 1; }
say "building with $(nproc) jobs"
started=$(date +%s)
ninja -C "$build/src/build" -j"$(nproc)" qemu-system-x86_64 >"$build/ninja.log" 2>&1 \
  || { tail -40 "$build/ninja.log" >&2; exit 1; }
mkdir -p "$out.new"
install -m 0755 "$build/src/build/qemu-system-x86_64" "$out.new/qemu-system-x86_64"
cp "${patches[@]}" "$out.new/"
echo "$version" > "$out.new/debian-version"
rm -rf "$out" && mv "$out.new" "$out"
ln -sfn "$out" "$latest"
ln -sfn "$out" "$cache/qemu-latest"   # the last build, for libvirt's <emulator>
say "built $out/qemu-system-x86_64 in $(( $(date +%s) - started ))s (Debian $version + patches $phash)"
echo "$latest/qemu-system-x86_64"
