#!/usr/bin/env python3
"""The durable-write floor of a one-host cluster (results/anatomy.md, fourth pass).

Three replicas on one host write the same disk at once for every batch. This times 4 KiB
O_DIRECT|O_DSYNC writes to preallocated, already-written files (how the WAL writes) from 1, 2
and 3 concurrent processes and prints each count's per-write p50/p90 in µs.

    scripts/concurrent-writes.py DIR [WRITES]     # DIR on the disk to measure; WRITES: 400
"""
import mmap
import multiprocessing as mp
import os
import statistics
import sys
import time


def writer(path, writes, queue, start):
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_DIRECT | os.O_DSYNC, 0o600)
    os.posix_fallocate(fd, 0, writes * 4096)
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * 4096)
    for off in range(0, writes * 4096, 4096):  # allocate and write every block once first
        os.pwrite(fd, buf, off)
    start.wait()
    lat = []
    for k in range(writes):
        t = time.perf_counter_ns()
        os.pwrite(fd, buf, k * 4096)
        lat.append((time.perf_counter_ns() - t) / 1000)
    os.close(fd)
    os.unlink(path)
    queue.put(lat)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    d, writes = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 400
    os.makedirs(d, exist_ok=True)
    for n in (1, 2, 3):
        queue, start = mp.Queue(), mp.Barrier(n)
        procs = [mp.Process(target=writer, args=(os.path.join(d, f"w{i}"), writes, queue, start))
                 for i in range(n)]
        for p in procs:
            p.start()
        lats = sorted(x for _ in procs for x in queue.get())
        for p in procs:
            p.join()
        print(f"writers={n} p50={statistics.median(lats):.0f}us p90={lats[int(len(lats) * 0.9)]:.0f}us")


if __name__ == "__main__":
    main()
