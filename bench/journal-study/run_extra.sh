#!/bin/bash
# 1 MiB payloads (100 msgs, batch 4) and a torn-tail check for seglog
set -u
cd "$(dirname "$0")"
B=target/release/jbench
R=results/extra.txt
for e in sqlite-full redb fjall seglog; do
  JB_PAYLOAD=1048576 timeout 90 $B $e append data/big-$e 100 4 | sed 's/mode=append/mode=append1M/' >> $R
  JB_PAYLOAD=1048576 timeout 90 $B $e drain data/big-$e | sed 's/mode=drain/mode=drain1M/' >> $R
  rm -rf data/big-$e
done
# torn tail: cut 50 bytes off the last segment (inside the last record), reopen
$B seglog append data/torn 10000 64 > /dev/null
f=$(ls data/torn/seglog/seg-*.log | tail -1); sz=$(stat -c %s $f); truncate -s $((sz-50)) $f
echo "torn: cut $f from $sz to $((sz-50))" >> $R
$B seglog open data/torn >> $R 2>&1
$B seglog open data/torn >> $R 2>&1
