#!/usr/bin/env python3
"""Median (and min..max) of each metric over rounds: summarize.py results/round-*.txt"""
import sys, re, statistics, collections
rows = collections.defaultdict(list)
for f in sys.argv[1:]:
    for line in open(f):
        if not line.startswith("RESULT"): continue
        kv = dict(re.findall(r"(\w+)=(\[.*?\]\]?|\S+)", line))
        # round 1's rate runs for sqlite-* used the first group-commit loop (deadline from the
        # first arrival without draining the queue first): excluded
        if kv.get("mode") == "rate" and f.endswith("round-1.txt") and kv["engine"].startswith("sqlite"):
            continue
        if kv.get("mode") == "append" and kv.get("n") == "20000":
            continue  # strace run
        tag = kv.get("tag", "")
        key = (kv["engine"] + tag, kv["mode"], kv.get("batch") or kv.get("rate") or "")
        kv["_file"] = f
        rows[key].append(kv)
def med(key, m):
    vals = [float(r[m]) for r in rows.get(key, []) if m in r and re.match(r"^-?[\d.]+$", r[m])]
    if not vals: return "n/a"
    md = statistics.median(vals)
    fmt = (lambda x: f"{x:.0f}") if md >= 100 else (lambda x: f"{x:.2f}")
    return f"{fmt(md)} ({fmt(min(vals))}–{fmt(max(vals))}, n={len(vals)})" if len(vals) > 1 else fmt(md)
engines = ["sqlite-full", "sqlite-normal", "redb", "redb-cache16M", "fjall", "fjall-mem16M", "seglog"]
tables = [
  ("append batch 64 (200k msgs)", ("append", "64"), ["msgs_per_s", "commits_per_s", "commit_ms_p50", "commit_ms_p99", "write_bytes_per_msg_incl_close", "wamp_incl_close", "wchar_per_msg"]),
  ("append batch 256 (1M msgs)", ("append", "256"), ["msgs_per_s", "commits_per_s", "commit_ms_p50", "commit_ms_p99", "write_bytes_per_msg_incl_close", "wamp_incl_close", "disk_bytes_after"]),
  ("offered 20k msg/s, 1 ms window (200k msgs)", ("rate", "20000"), ["msgs_per_s", "commits_per_s", "msgs_per_commit", "ack_ms_p50", "ack_ms_p99", "write_bytes_per_msg", "wamp"]),
  ("open after 1M (clean close)", ("open", ""), ["open_ms", "rss_kb"]),
  ("kill -9 after 2 s of appends on top of 1M", ("crash", ""), ["open_ms_after_kill", "acked_seq", "entries_verified", "all_acked_present"]),
  ("drain (read in order + advance cursor + delete), ~1.05-1.25M entries", ("drain", ""), ["msgs_per_s", "open_ms", "write_bytes_per_msg", "hwm_kb", "disk_bytes_after"]),
]
for title, (mode, b), ms in tables:
    print(f"\n### {title}\n")
    print("| engine | " + " | ".join(ms) + " |")
    print("|---|" + "---|" * len(ms))
    for e in engines:
        key = (e, mode, b)
        if key not in rows: continue
        cells = []
        for m in ms:
            if m == "all_acked_present":
                cells.append(",".join(r[m] for r in rows[key]))
            else:
                cells.append(med(key, m))
        print(f"| {e} | " + " | ".join(cells) + " |")
