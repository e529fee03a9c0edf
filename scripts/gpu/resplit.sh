#!/usr/bin/env bash
# Cut device-pack's wheel parts (.dev/p1 .. .dev/pN) again into pieces of at most MAX_MIB MiB, so that one
# piece and the work tree fit the 64 MiB a device call carries (device-pack cuts 56 MiB pieces, which leave
# 8 MiB for the work tree). The concatenation, and so unpack.sh's sha256 check, stay the same.
#
#   bash scripts/gpu/resplit.sh MAX_MIB [DIR]     (DIR default .dev; scripts/gpu/pack.sh calls it when needed)
set -euo pipefail
max=${1:?usage: resplit.sh MAX_MIB [DIR]}
dir=${2:-.dev}
[ "$max" -ge 1 ] 2>/dev/null || { echo "MAX_MIB must be a whole number of MiB >= 1, not '$max'"; exit 2; }
[ -f "$dir/p1/unpack.sh" ] || { echo "no device-pack parts in $dir (p1/unpack.sh missing)"; exit 2; }
n=0
while [ -d "$dir/p$((n + 1))" ]; do n=$((n + 1)); done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 "$n"); do cat "$dir/p$i/part$i"; done > "$tmp/all"
cp "$dir/p1/unpack.sh" "$tmp/unpack.sh"
pieces=$(( ( $(stat -c %s "$tmp/all") + max * 1048576 - 1 ) / (max * 1048576) ))
# unpack.sh reassembles with `cat /tmp/dvparts/part*`: part10 would sort before part2
[ "$pieces" -le 9 ] || { echo "$pieces pieces of $max MiB: more than 9, which unpack.sh cannot order; shrink the work tree"; exit 1; }
for i in $(seq 1 "$n"); do rm -rf "${dir:?}/p$i"; done
split -b "${max}m" -d -a 1 "$tmp/all" "$tmp/piece"
k=0
for f in "$tmp"/piece*; do k=$((k + 1)); mkdir -p "$dir/p$k"; mv "$f" "$dir/p$k/part$k"; done
mv "$tmp/unpack.sh" "$dir/p1/unpack.sh"
echo "$n parts re-cut into $k of at most $max MiB in $dir"
