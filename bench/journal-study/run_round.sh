#!/bin/bash
# one round of every measurement for every engine; output appended to results/round-$1.txt
set -u
cd "$(dirname "$0")"
B=target/release/jbench
R=results/round-$1.txt
mkdir -p results data
for e in ${ENGINES:-sqlite-full sqlite-normal redb fjall seglog}; do
  d=data/$e
  echo "## $e $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)" >> $R
  if [ "$1" = 1 ]; then
    strace -f -c -e trace=fsync,fdatasync,sync_file_range,msync,syncfs -o results/strace-$e.txt $B $e append $d 20000 64 >> $R
  fi
  timeout 90 $B $e append $d 200000 64 >> $R
  timeout 90 $B $e rate $d 20000 10 1 >> $R
  timeout 90 $B $e append $d 1000000 256 >> $R
  timeout 90 $B $e open $d >> $R
  timeout 90 $B $e crash $d 64 2000 >> $R 2>&1
  timeout 90 $B $e drain $d >> $R
  du -sb $d | sed 's/^/DU after drain: /' >> $R
done
