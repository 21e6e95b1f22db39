"""What the training-throughput benchmarks share: the machine's matmul peak, timed optimiser steps
with their FLOPs counted, and peak memory.  Imported by the scripts beside it
(``python benchmarks/<script>.py`` puts this folder on the path)."""

import platform
import resource
import time
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, seconds: float = 3.0) -> float:
    """Sustained FLOP/s of an n x n matmul on random data: the practical ceiling for a Transformer's linear
    layers.  n is 8192 on a GPU (4096 leaves an H100-class chip part idle) and 4096 on a CPU."""
    n = n or (8192 if device.type == "cuda" else 4096)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10:
            continue
        sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; process-wide high-water mark


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def counted_eagerly():
    """The context in which a step's FLOPs are counted: compiled code runs eagerly in it (the model FLOPs are the
    same; an Inductor kernel would hide its operations from ``FlopCounterMode``), and nothing is compiled yet."""
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return stance("force_eager") if stance else nullcontext()


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> tuple[float, float, int | None]:
    """(seconds for ``steps`` calls of ``step`` after ``warmup`` more, FLOPs of one call as counted by
    ``torch.utils.flop_counter`` on a first real call, host syncs in the timed calls).  Peak memory is reset
    after the warm-up.  Host syncs are what ``torch.cuda.set_sync_debug_mode("warn")`` reports (a GPU only;
    None on a CPU): each one stalls the CPU until the GPU catches up."""
    counter = FlopCounterMode(display=False)
    with counted_eagerly(), counter:
        step()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        sync(device)
        seconds = time.perf_counter() - t0
    syncs = sum("synchroniz" in str(w.message) for w in caught) if device.type == "cuda" else None
    return seconds, float(counter.get_total_flops()), syncs


def sync_sites(step: Callable[[], None], device: torch.device) -> dict[str, int]:
    """Where one call of ``step`` makes the host wait for the GPU: "file:line function" of the innermost
    frame in sslvit or these benchmarks -> count, from ``torch.cuda.set_sync_debug_mode("warn")`` (a GPU only:
    empty on a CPU).  Run it after the warm-up, so that compilation's own syncs are not counted."""
    if device.type != "cuda":
        return {}
    sites: dict[str, int] = {}
    shown = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        ours = [f for f in traceback.extract_stack()[:-1] if "/sslvit/" in f.filename or "/benchmarks/" in f.filename]
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].name}" if ours else f"{filename}:{lineno}"
        sites[where] = sites.get(where, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = shown
    return sites


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int, warmup: int, device: torch.device,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, tuple[list[float], float]]:
    """Several step functions timed in one process, one step of each in turn, so that they share the
    machine's noise (another process waking up slows all of them, not one): name -> (seconds of each of
    ``rounds`` steps, FLOPs of one step as ``torch.utils.flop_counter`` counts them on a first call).
    Every other round runs them in reverse order (A B, B A, ...), so a drift over the run favours none.
    ``clock=time.process_time`` counts the CPU seconds this process spent instead of wall seconds: on a
    shared CPU with one torch thread, the work a step takes, whatever else the machine is running."""
    flops = {}
    for name, step in steps.items():
        counter = FlopCounterMode(display=False)
        with counted_eagerly(), counter:
            step()
        for _ in range(warmup):
            step()
        flops[name] = float(counter.get_total_flops())
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name in list(steps)[:: 1 if r % 2 == 0 else -1]:
            sync(device)
            t0 = clock()
            steps[name]()
            sync(device)
            times[name].append(clock() - t0)
    return {name: (times[name], flops[name]) for name in steps}
