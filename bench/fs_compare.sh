#!/usr/bin/env bash
# Compares iomapfs with kernel ext4 and fuse2fs on the same workloads, in one run, and prints
# the ratios. Run by hand as root (not by ctest): bench/fs_compare.sh [BUILD_DIR]
#
# Each filesystem gets a fresh 4 GiB ext4 image (mke2fs defaults) on the same disk: kernel ext4
# on a loop device, iomapfs -o rw, and fuse2fs (Debian's e2fsprogs). Workloads (fio, buffered
# I/O, page cache dropped before each read job): 1 GiB sequential write with fsync, 1 GiB
# sequential read, 4 KiB random reads and writes for a fixed time, and a metadata job
# (create, stat, unlink 10,000 files).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
IOMAPFS="$BUILD_DIR/fsserver/iomapfs"
[ "$(id -u)" -eq 0 ] || { echo "fs_compare: needs root (loop devices, mounts)" >&2; exit 1; }
[ -x "$IOMAPFS" ] || { echo "fs_compare: build first ($IOMAPFS missing)" >&2; exit 1; }
for p in fio fuse2fs bc; do
  command -v "$p" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done

work=$(mktemp -d /tmp/iomapfs-bench.XXXXXX)
cleanup() {
  for m in "$work"/mnt-*; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

mount_fs() {  # name image mountpoint
  case "$1" in
    ext4) mount -o loop "$2" "$3" ;;
    iomapfs) "$IOMAPFS" "$2" "$3" -o rw ;;
    fuse2fs) fuse2fs "$2" "$3" -o rw,allow_other >/dev/null ;;
  esac
}

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# fio job -> throughput (MiB/s) or IOPS, from its terse JSON.
run_fio() {  # dir name rw bs size runtime(0: none) -> prints "bw_MiBps iops"
  local dir=$1 name=$2 rw=$3 bs=$4 size=$5 runtime=$6 extra=()
  [ "$runtime" != 0 ] && extra=(--time_based --runtime="$runtime")
  fio --name="$name" --directory="$dir" --rw="$rw" --bs="$bs" --size="$size" \
      --ioengine=psync --end_fsync=1 --numjobs=1 "${extra[@]}" --output-format=json 2>/dev/null |
    awk -v rw="$rw" '
      /"read" : \{/ {sec="read"} /"write" : \{/ {sec="write"}
      /"trim" : \{/ {sec="trim"} /"sync" : \{/ {sec="sync"}
      /"bw_bytes"/ {gsub(/[,]/,""); if ((rw ~ /read/ && sec=="read") || (rw ~ /write/ && sec=="write")) bw=$3}
      /"iops" :/ {gsub(/[,]/,""); if ((rw ~ /read/ && sec=="read") || (rw ~ /write/ && sec=="write")) io=$3}
      END {printf "%.1f %.0f\n", bw/1048576, io}'
}

metadata_secs() {  # dir -> seconds for create+stat+unlink of 10,000 files
  local dir=$1/meta start end
  mkdir -p "$dir"
  start=$(date +%s.%N)
  (cd "$dir" && seq 1 10000 | xargs touch && seq 1 10000 | xargs stat >/dev/null &&
     seq 1 10000 | xargs rm -f)
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

declare -A R
for fs in ext4 iomapfs fuse2fs; do
  img="$work/$fs.img"; mnt="$work/mnt-$fs"
  mkdir -p "$mnt"; truncate -s 4G "$img"; mke2fs -q -F -t ext4 "$img"
  mount_fs "$fs" "$img" "$mnt"
  R[$fs,seqwrite]=$(run_fio "$mnt" seq write 1M 1G 0 | cut -d' ' -f1)
  drop
  R[$fs,seqread]=$(run_fio "$mnt" seq read 1M 1G 0 | cut -d' ' -f1)
  drop
  R[$fs,randread]=$(run_fio "$mnt" seq randread 4k 1G 15 | cut -d' ' -f2)
  R[$fs,randwrite]=$(run_fio "$mnt" seq randwrite 4k 1G 15 | cut -d' ' -f2)
  rm -f "$mnt"/seq.*
  R[$fs,meta]=$(metadata_secs "$mnt")
  umount "$mnt"
  while fuser "$img" >/dev/null 2>&1; do sleep 0.1; done
  e2fsck -fn "$img" >/dev/null 2>&1 || echo "warning: $fs left an image e2fsck -fn does not pass" >&2
  echo "done: $fs" >&2
done

printf "\n%-26s %10s %10s %10s %12s %12s\n" workload ext4 iomapfs fuse2fs "iomapfs/ext4" "iomapfs/fuse2fs"
row() {  # key label higher_is_better
  local a=${R[ext4,$1]} b=${R[iomapfs,$1]} c=${R[fuse2fs,$1]}
  if [ "$3" = 1 ]; then
    printf "%-26s %10s %10s %10s %12.2f %12.2f\n" "$2" "$a" "$b" "$c" "$(echo "$b/$a" | bc -l)" "$(echo "$b/$c" | bc -l)"
  else
    printf "%-26s %10.2f %10.2f %10.2f %12.2f %12.2f\n" "$2" "$a" "$b" "$c" "$(echo "$a/$b" | bc -l)" "$(echo "$c/$b" | bc -l)"
  fi
}
row seqwrite "seq write 1M (MiB/s)" 1
row seqread "seq read 1M cold (MiB/s)" 1
row randread "rand read 4k (IOPS)" 1
row randwrite "rand write 4k (IOPS)" 1
row meta "10k create+stat+rm (s)" 0
echo "(ratios: >1 means iomapfs is better; for the metadata row, ratio of times inverted)"
