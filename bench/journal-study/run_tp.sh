#!/bin/bash
# throughput-only round (append b64, append b256, 20k/s rate), engines interleaved; results/tp-$1.txt
set -u
cd "$(dirname "$0")"
B=target/release/jbench
R=results/tp-$1.txt
for e in ${ORDER:-sqlite-full redb fjall seglog sqlite-normal}; do
  echo "## $e $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)" >> $R
  timeout 90 $B $e append data/$e 200000 64 >> $R
  timeout 90 $B $e rate data/$e 20000 10 1 >> $R
  timeout 90 $B $e append data/$e 1000000 256 >> $R
done
