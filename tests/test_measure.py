"""The benchmarks' measuring tools: peak memory sees what a block allocates, and nothing it did not."""
import os

import torch

from nnunet_mem_cif.measure import PeakMemory, in_fresh_process, interleaved_seconds, timed


def test_cpu_peak_memory_counts_a_freed_allocation_inside_the_block():
    with PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(200 * 2 ** 20 // 4)  # 200 MiB of float32, every page touched
        del block
    assert 190 <= peak.mib <= 260
    with PeakMemory(torch.device("cpu")) as nothing:
        pass
    assert nothing.mib < 20


def test_fresh_process_and_timing():
    assert in_fresh_process(os.getpid) != os.getpid()
    assert timed(lambda: sum(range(10 ** 6)), torch.device("cpu")) > 0


def test_interleaved_seconds_warms_up_then_alternates():
    calls = []
    times = interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2,
                                torch.device("cpu"))
    assert calls == ["a", "b"] * 3  # one warm-up round, then two timed rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
