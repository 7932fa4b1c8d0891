#!/usr/bin/env python3
"""Where each thread's CPU goes, by the system call it was in (results/anatomy.md, fifth pass).

Reads a `perf record -g` profile (frame pointers are enough: only the kernel's part of each
stack is used) and prints, per thread with at least 1 % of the samples, the share of its
samples inside each system call (send, recv, io_uring_enter, epoll_wait, ...), in page
faults, in interrupts, and in user space.

    perf record -F 1999 -g -p PID,PID,... -o perf.data -- sleep 5
    scripts/cpu-by-syscall.py perf.data
"""
import collections
import subprocess
import sys

# (label, a kernel symbol that marks it); the first that appears in a sample's stack wins.
CATEGORIES = [
    ("sendto (TCP send)", "__sys_sendto"),
    ("sendmsg", "__sys_sendmsg"),
    ("recvfrom (TCP recv)", "__sys_recvfrom"),
    ("io_uring_enter (WAL)", "__do_sys_io_uring_enter"),
    ("epoll_wait", "do_epoll_wait"),
    ("read", "ksys_read"),
    ("write", "ksys_write"),
    ("other system call", "do_syscall_64"),
    ("page fault", "asm_exc_page_fault"),
    ("interrupt / softirq", "asm_common_interrupt"),
    ("interrupt / softirq", "asm_sysvec_"),
]


def samples(path):
    """Yields (thread, [frame symbols, innermost first]) per sample."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "pid,tid,comm,ip,sym"],
        check=True, capture_output=True, text=True,
    ).stdout
    thread, frames = None, []
    for line in out.splitlines():
        if not line.strip():
            if thread is not None:
                yield thread, frames
            thread, frames = None, []
        elif line.startswith("\t"):
            parts = line.split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else "?")
        else:
            # "comm pid/tid" (comm may contain spaces)
            head = line.rsplit(None, 1)
            thread = f"{head[-1].strip()} {head[0].strip()}" if len(head) == 2 else line.strip()
    if thread is not None:
        yield thread, frames


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    by_thread = collections.defaultdict(collections.Counter)
    total = 0
    for thread, frames in samples(sys.argv[1]):
        total += 1
        label = None
        for name, marker in CATEGORIES:
            if any(marker in f for f in frames):
                label = name
                break
        if label is None:
            kernel = any(f.startswith(("entry_SYSCALL", "asm_")) for f in frames)
            label = "kernel, other" if kernel else "user space"
        by_thread[thread][label] += 1
    if not total:
        sys.exit("no samples")
    for thread, counts in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counts.values())
        if n < total / 100:
            continue
        print(f"{thread}: {n} samples ({100 * n / total:.1f} % of all)")
        for label, c in counts.most_common():
            print(f"    {label:24s} {100 * c / n:5.1f} %")


if __name__ == "__main__":
    main()
