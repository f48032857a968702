#!/usr/bin/env bash
# Quick start: installs dependencies, builds, makes a small demo ext4 image, mounts it with
# iomapfs, lists and reads it, and unmounts. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
BIN="${BUILD_DIR:-build}/fsserver/iomapfs"

work=$(mktemp -d /tmp/iomapfs-demo.XXXXXX)
mnt="$work/mnt"
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

echo "== making a demo tree and a 64 MiB ext4 image from it"
src="$work/src"
mkdir -p "$src/docs/deep/er" "$mnt"
echo "Hello from an ext4 image served by iomapfs." > "$src/hello.txt"
seq 1 20000 > "$src/docs/numbers.txt"
head -c 3000000 /dev/urandom > "$src/docs/random.bin"
truncate -s 1G "$src/sparse-1G.img"
echo "at the bottom" > "$src/docs/deep/er/file"
ln -s docs/numbers.txt "$src/link-to-numbers"
truncate -s 64M "$work/demo.img"
mke2fs -q -F -t ext4 -L iomapfs-demo -d "$src" "$work/demo.img"

echo "== mounting it read-only at $mnt"
"$BIN" "$work/demo.img" "$mnt" -o ro
echo "== ls -l"
ls -l "$mnt"
echo "== cat hello.txt"
cat "$mnt/hello.txt"
echo "== checksums (image through iomapfs vs source)"
(cd "$mnt" && sha256sum docs/numbers.txt docs/random.bin)
(cd "$src" && sha256sum docs/numbers.txt docs/random.bin)
echo "== du and df"
du -sh --apparent-size "$mnt/sparse-1G.img"; du -sh "$mnt/sparse-1G.img"
df -h "$mnt"
echo "== unmounting"
umount "$mnt"
echo "demo: OK"
