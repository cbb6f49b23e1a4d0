"""One OpenMP thread team per process: the engine thread's.

PyTorch's CPU kernels run on OpenMP (GNU libgomp in its wheels). Every thread that runs a
parallel kernel gets a team of its own, whose workers live as long as that thread. libgomp
counts the workers of all teams, and once there are more than usable cores it stops letting
idle workers spin between kernels: each of the thousands of small kernels in a decode step
then pays a futex wake-up. On 2 cores, with the model loaded on one thread and run on another,
a ``[64, 576]`` add takes 80 us instead of 4 us and a decode step of SmolLM2-shaped 64 sequences
goes from 45 to 54 ms (benchmarks/RESULTS.md, 2026-12-03).

So :class:`~pe_engine.async_engine.AsyncEngine` loads its model on a thread that then exits
(its team goes with it) and its engine thread calls :func:`claim_kernel_threads`: the engine
thread keeps the configured count, and threads that start running kernels afterwards (a
server's tensor-decoding pool, the event loop) run them on one thread, without a team.

The configured count itself comes from :func:`configure_threads`, which the runner calls.
"""

from __future__ import annotations

import os
import threading

import torch


def claim_kernel_threads(num_threads: int) -> None:
    """Run the calling thread's CPU kernels on ``num_threads`` threads and make one thread the
    default for threads that have not run a kernel yet. Threads that already did keep theirs."""
    # PyTorch applies its process-wide count to a thread lazily, at the thread's first query or
    # kernel; trigger that first, or it would later undo the count set here.
    torch.get_num_threads()
    torch.set_num_threads(num_threads)
    # torch.set_num_threads sets the process-wide count and the calling thread's own. Setting 1
    # from a short-lived helper changes the default and leaves this thread's count alone.
    helper = threading.Thread(target=torch.set_num_threads, args=(1,), name="pe-threads")
    helper.start()
    helper.join()


def configure_threads(device: torch.device, num_threads: int | None) -> None:
    """Set the CPU kernel threads: ``num_threads``, else OMP_NUM_THREADS, else every usable
    core (as vLLM's CPU backend does for one rank). On a machine shared with other busy
    processes, fewer threads than cores can be much faster: an OpenMP barrier waiting on a
    descheduled thread costs more than the extra core gains (see benchmarks/RESULTS.md)."""
    if device.type != "cpu":
        return
    if num_threads is None:
        requested = os.environ.get("OMP_NUM_THREADS", "")
        if requested.isdigit() and int(requested) > 0:
            num_threads = int(requested)
        else:
            num_threads = _num_usable_cores()
    torch.set_num_threads(num_threads)


def _num_usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
