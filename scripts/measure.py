#!/usr/bin/env python3
"""Runs a command and prints its wall time and the peak memory of its whole process tree
(the sum of the RSS of every live descendant, sampled every 0.1 s) as one JSON line.

    measure.py LABEL -- CMD ARGS...
"""
import json
import subprocess
import sys
import tempfile
import time

import psutil


def tree_rss(proc):
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def main():
    label = sys.argv[1]
    cmd = sys.argv[sys.argv.index("--") + 1:]
    t0 = time.time()
    # A file, not a pipe: nobody reads a pipe while the child runs, and a full one blocks it.
    log = tempfile.TemporaryFile()
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc = psutil.Process(child.pid)
    peak = 0
    while True:
        peak = max(peak, tree_rss(proc))
        # Returns as soon as the child ends: a sub-second run is timed to the millisecond.
        try:
            child.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
    wall = time.time() - t0
    if child.returncode != 0:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-3000:])
    print(json.dumps({"label": label, "ok": child.returncode == 0, "wall_s": round(wall, 2),
                      "peak_rss_mb": round(peak / 2**20)}), flush=True)


if __name__ == "__main__":
    main()
