"""Wall time and peak memory of a piece of work, for the benchmarks (CUDA from torch's allocator, CPU from Linux)."""
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, List

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], object], device: torch.device) -> float:
    """Seconds ``work()`` takes, with CUDA work finished before and after (kernels run asynchronously)."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_seconds(work: Dict[str, Callable[[], object]], repeats: int,
                        device: torch.device) -> Dict[str, List[float]]:
    """One warm-up call of each (allocator, oneDNN / cuDNN kernel choice), then ``repeats`` rounds A, B, A, B, ...:
    on a noisy machine every candidate sees the same slow and fast moments, so their ratios stay meaningful."""
    for function in work.values():
        function()
    times = {name: [] for name in work}
    for _ in range(repeats):
        for name, function in work.items():
            times[name].append(timed(function, device))
    return times


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


class PeakMemory:
    """Peak memory used inside the ``with`` block, above the level at its start, in MiB (``self.mib``).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors; what decides whether a batch fits). CPU: the process's
    resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``, Linux only). The CPU number
    counts every page the process touched, and memory freed earlier but kept by the allocator hides part of a new
    peak, so measure CPU peaks in a fresh process (``in_fresh_process``), on the first run of the work.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")
        self._start = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            if not os.path.exists("/proc/self/clear_refs"):
                raise RuntimeError("CPU peak memory is measured through Linux's /proc/self/clear_refs; this system "
                                   "has none. Measure on Linux or on CUDA.")
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # reset the high-water mark to the current resident set
            self._start = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_status_kib("VmHWM") * 1024
        self.mib = (peak - self._start) / 2 ** 20


def in_fresh_process(function: Callable, *args):
    """``function(*args)`` in a new Python process (spawned: no memory or CUDA state inherited), its result back."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()
