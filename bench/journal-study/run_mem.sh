#!/bin/bash
# RSS with bounded caches: redb cache 16 MiB, fjall cache+write buffer 16 MiB (memtable 8 MiB)
set -u
cd "$(dirname "$0")"
B=target/release/jbench
R=results/mem.txt
echo "## redb JB_REDB_CACHE_MB=16 $(date +%T)" >> $R
JB_REDB_CACHE_MB=16 $B redb append data/redb-mem 1000000 256 | sed 's/engine=redb/engine=redb tag=-cache16M/' >> $R
JB_REDB_CACHE_MB=16 $B redb drain data/redb-mem | sed 's/engine=redb/engine=redb tag=-cache16M/' >> $R
echo "## fjall JB_FJALL_MEM_MB=16 $(date +%T)" >> $R
JB_FJALL_MEM_MB=16 $B fjall append data/fjall-mem 1000000 256 | sed 's/engine=fjall/engine=fjall tag=-mem16M/' >> $R
JB_FJALL_MEM_MB=16 $B fjall open data/fjall-mem | sed 's/engine=fjall/engine=fjall tag=-mem16M/' >> $R
JB_FJALL_MEM_MB=16 $B fjall drain data/fjall-mem | sed 's/engine=fjall/engine=fjall tag=-mem16M/' >> $R
du -sb data/redb-mem data/fjall-mem >> $R
