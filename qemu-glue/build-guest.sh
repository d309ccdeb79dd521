#!/usr/bin/env bash
# Builds the tiny test guest from Debian packages: an uncompressed kernel (vmlinux,
# bootable with -kernel through its PVH note) and a busybox initramfs with the
# virtio/e1000 modules and the test services (see qemu-glue/guest/init).
# Result (cached, idempotent): ${COLO_CACHE:-/var/cache/colo-proxy}/guest/{vmlinux,initramfs.cpio.gz}
# Usage: qemu-glue/build-guest.sh [--force]    Prints the two paths on its last lines.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${COLO_CACHE:-/var/cache/colo-proxy}"
out="$cache/guest"
say() { echo "build-guest: $*" >&2; }

# The guest is keyed by its inputs: the init script and this script.
key="$(cat "$0" "$here/guest/init" | sha256sum | cut -c1-16)"
if [[ "${1:-}" != "--force" && -f "$out/key" && "$(cat "$out/key")" == "$key" \
      && -s "$out/vmlinux" && -s "$out/initramfs.cpio.gz" ]]; then
  say "cached guest is up to date ($out, key $key)"
  echo "$out/vmlinux"; echo "$out/initramfs.cpio.gz"; exit 0
fi

if ! command -v cpio >/dev/null || ! command -v xz >/dev/null; then
  say "installing cpio and xz-utils (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 cpio xz-utils >/dev/null
fi
for tool in apt-get dpkg-deb cpio gzip xz; do
  command -v "$tool" >/dev/null || { say "missing $tool: install it (apt-get install cpio xz-utils dpkg)"; exit 2; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt-get download runs as _apt
cd "$work"

# Debian's current 6.1 kernel package (whatever linux-image-amd64 points at).
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6/ {print $2; exit}')"
if [[ -z "$kpkg" ]]; then
  say "apt-cache does not know linux-image-amd64: running apt-get update"
  apt-get update -qq
  kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/ {print $2; exit}')"
fi
say "downloading $kpkg and busybox-static (apt-get download, nothing is installed)"
apt-get download -qq "$kpkg" busybox-static
dpkg-deb -x "$kpkg"_*.deb kernel
dpkg-deb -x busybox-static_*.deb bb

kver="$(ls kernel/lib/modules | head -1)"
vmlinuz="kernel/boot/vmlinuz-$kver"
# vmlinuz is a bzImage whose payload is an xz stream: find its magic and unpack it.
offset="$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)"
[[ -n "$offset" ]] || { say "no xz payload in $vmlinuz"; exit 1; }
tail -c +"$((offset + 1))" "$vmlinuz" | xz -dc 2>/dev/null > vmlinux || true
head -c 4 vmlinux | grep -q $'\x7fELF' || { say "unpacked payload of $vmlinuz is not an ELF vmlinux"; exit 1; }
say "kernel $kver: vmlinux $(stat -c %s vmlinux) bytes (from offset $offset of vmlinuz)"

root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,etc,modules,www/cgi-bin,usr/bin,usr/sbin}
cp bb/bin/busybox "$root/bin/busybox"
# Modules in load order (dependencies first); Debian ships them xz-compressed or plain.
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio
         failover net_failover virtio_net e1000)
: > "$root/modules/order"
for m in "${modules[@]}"; do
  f="$(find kernel/lib/modules/"$kver" -name "$m.ko*" | head -1)"
  if [[ -z "$f" ]]; then say "module $m not in the package (built in?), skipped"; continue; fi
  case "$f" in
    *.xz) xz -dc "$f" > "$root/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" > "$root/modules/$m.ko" ;;
    *) cp "$f" "$root/modules/$m.ko" ;;
  esac
  echo "$m" >> "$root/modules/order"
done
say "modules: $(tr '\n' ' ' < "$root/modules/order")"
install -m 0755 "$here/guest/init" "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -9n) > initramfs.cpio.gz

mkdir -p "$out"
mv vmlinux "$out/vmlinux.new" && mv "$out/vmlinux.new" "$out/vmlinux"
mv initramfs.cpio.gz "$out/initramfs.cpio.gz.new" && mv "$out/initramfs.cpio.gz.new" "$out/initramfs.cpio.gz"
echo "$kver" > "$out/kernel-version"
echo "$key" > "$out/key"
say "built $out/vmlinux and $out/initramfs.cpio.gz ($(stat -c %s "$out/initramfs.cpio.gz") bytes), key $key"
echo "$out/vmlinux"; echo "$out/initramfs.cpio.gz"
