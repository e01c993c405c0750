#!/bin/bash
# steady state: 20k msg/s offered, 1 ms group-commit window, consumer keeps up and deletes; 3 interleaved repeats
set -u
cd "$(dirname "$0")"
B=target/release/jbench
for r in 1 2 3; do for e in sqlite-full redb fjall seglog sqlite-normal; do
  echo "## $e $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)" >> results/steady.txt
  timeout 90 $B $e steady data/st-$e 20000 10 1 >> results/steady.txt
done; done
