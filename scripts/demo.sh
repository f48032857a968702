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

echo "== making a demo tree and an ext4 image from it with iomapfs-mkfs"
src="$work/src"
mkdir -p "$src/docs/deep/er" "$mnt"
echo "Hello from an ext4 image served by iomapfs." > "$src/hello.txt"
seq 1 20000 > "$src/docs/numbers.txt"
head -c 3000000 /dev/urandom > "$src/docs/random.bin"
truncate -s 1G "$src/sparse-1G.img"
echo "at the bottom" > "$src/docs/deep/er/file"
ln -s docs/numbers.txt "$src/link-to-numbers"
"${BUILD_DIR:-build}/mkfs/iomapfs-mkfs" -q -L iomapfs-demo -d "$src" "$work/demo.img" 64M

echo "== mounting it read-write at $mnt"
"$BIN" "$work/demo.img" "$mnt" -o rw
echo "== ls -l"
ls -l "$mnt"
echo "== cat hello.txt"
cat "$mnt/hello.txt"
echo "== checksums (image through iomapfs vs source)"
(cd "$mnt" && sha256sum docs/numbers.txt docs/random.bin)
(cd "$src" && sha256sum docs/numbers.txt docs/random.bin)
echo "== du of a 1 GiB sparse file (apparent, allocated)"
du -sh --apparent-size "$mnt/sparse-1G.img"; du -sh "$mnt/sparse-1G.img"
echo "== writing: a new directory, a copy, a rename, an xattr"
mkdir "$mnt/new"
cp "$mnt/docs/random.bin" "$mnt/new/copy.bin"
mv "$mnt/new/copy.bin" "$mnt/new/renamed.bin"
setfattr -n user.note -v "written through iomapfs" "$mnt/new/renamed.bin"
getfattr -n user.note "$mnt/new/renamed.bin"
cmp "$mnt/docs/random.bin" "$mnt/new/renamed.bin" && echo "copy matches"
df -h "$mnt"
echo "== unmounting, then e2fsck -fn on the image"
umount "$mnt"
while fuser "$work/demo.img" >/dev/null 2>&1; do sleep 0.1; done
e2fsck -fn "$work/demo.img"
echo "demo: OK"
