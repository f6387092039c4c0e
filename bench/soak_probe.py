"""Run `teamsbc run ...` unchanged, with instruments for the soak (bench/soak.py):

    python bench/soak_probe.py OUT.json run -c teamsbc.yaml

- every cyclic collection, timed with gc.callbacks (start/stop): time since start, generation,
  duration (wall, and CPU time of the collecting thread), objects collected; a collection runs with the GIL held, so its duration is a pause
  of the event loop;
- every minute: RSS (/proc/self/status: anonymous and file-backed), glibc's heap (mallinfo2: in use,
  free but kept), pymalloc's blocks, the collector's counters (gc.get_count, get_stats);
- tracemalloc: started at SOAK_TM_START seconds (default 240; SOAK_TM_FRAMES frames, default 1: each more frame costs), snapshots at
  SOAK_TM_A and SOAK_TM_B (default 300 and 1500 = 5 and 25 minutes) dumped to OUT.json.a.snapshot
  and .b.snapshot (bench/soak.py compares them after the run), stopped after the second;
- once, at SOAK_CYCLES seconds (default 600): one full collection with gc.DEBUG_SAVEALL, frozen
  objects included, the types of the objects that were in reference cycles (what only the
  cyclic collector frees; the garbage is then freed);
- at SOAK_CENSUS seconds (default 300,1500): every object the collector knows (frozen ones
  too) counted by type, with RSS and sys.getallocatedblocks(): what holds the memory.

The teamsbc code, its GC settings included, runs as `python -m teamsbc` would run it. Everything
is written to OUT.json (the collections to OUT.json.pauses, appended) at every minute and when
the process exits (SIGTERM: graceful stop).
"""
from __future__ import annotations

import array
import atexit
import collections
import ctypes
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc

T0 = time.monotonic()
FRAMES = int(os.environ.get("SOAK_TM_FRAMES", 1))
_pending: dict[int, float] = {}
_forced: list[bool] = [False]
# (t, generation, wall ms, collected, forced by us, CPU ms of the collecting thread): a wall time far
# above the CPU time is the kernel running something else (a shared machine), not collector work.
# Kept in typed arrays, 34 bytes a collection: a tuple each (~180 bytes with its floats) made the
# probe's own record 3 MiB of the SBC's heap growth over 30 minutes (soak 3).
PAUSE_FIELDS = (("t", "d"), ("generation", "b"), ("ms", "d"), ("collected", "q"), ("forced", "b"), ("cpu_ms", "d"))
pauses = {name: array.array(code) for name, code in PAUSE_FIELDS}


def _own_kib() -> float:
    """What the probe's records hold (the part of the SBC's memory that is the probe's)."""
    return round(sum(a.buffer_info()[1] * a.itemsize for a in pauses.values()) / 1024, 1)


minutes: list[dict] = []
tm: dict = {}
cycles: dict = {}
censuses: list[dict] = []
newobjs: list[dict] = []


def _census(t: float) -> dict:
    """Every object the collector knows of, frozen ones included (teamsbc.collector freezes
    what survives a second), by type: what holds the memory, without tracemalloc's cost."""
    t1 = time.perf_counter()
    gc.disable()
    try:
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        kinds = collections.Counter(type(o).__name__ for o in gc.get_objects())
        gc.freeze()
    finally:
        gc.enable()
    return {"t": round(t, 1), "rss_kib": _rss_kib(), "objects": sum(kinds.values()), "frozen": frozen,
            "blocks": sys.getallocatedblocks(), "types": kinds.most_common(30),
            "ms": round((time.perf_counter() - t1) * 1e3, 1)}


_marked: set[int] = set()


def _new_objects(t: float, kind: str) -> dict:
    """SOAK_NEW="T1,T2[,TYPE]": at T1 note the ids of every object of TYPE (default tuple),
    at T2 sample the ones born since that are still alive, with what refers to them: which
    structure keeps growing (a diagnostic; each stalls the SBC like a census)."""
    gc.disable()
    try:
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        objs = [o for o in gc.get_objects() if type(o).__name__ == kind]
        if not _marked:
            _marked.update(id(o) for o in objs)
            out = {"t": round(t, 1), "marked": len(_marked)}
        else:
            new = [o for o in objs if id(o) not in _marked]
            sample = []
            for o in new[:: max(1, len(new) // 25)][:25]:
                refs = [type(r).__name__
                        for r in gc.get_referrers(o) if r is not objs and r is not new][:4]
                sample.append({"repr": repr(o)[:240], "referrers": refs,
                               "referrer_reprs": [repr(r)[:160] for r in gc.get_referrers(o)
                                                  if r is not objs and r is not new][:2]})
            out = {"t": round(t, 1), "new_alive": len(new), "sample": sample}
        gc.freeze()
        out["frozen_before"] = frozen
        return out
    finally:
        gc.enable()


def _rss_kib() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def _memory() -> dict:
    """Where the RSS lives: anonymous vs file-backed pages (/proc/self/status), glibc's heap
    (mallinfo2, every arena: in use, free but kept, mmapped blocks) and pymalloc's blocks."""
    out: dict = {"blocks": sys.getallocatedblocks()}
    try:
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "RssShmem", "VmData"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _Mallinfo2
        mi = libc.mallinfo2()
        out.update(malloc_in_use_kib=mi.uordblks // 1024, malloc_free_kib=mi.fordblks // 1024,
                   malloc_mmapped_kib=mi.hblkhd // 1024, malloc_arena_kib=mi.arena // 1024)
    except (AttributeError, OSError):
        pass
    return out


def _gc_cb(phase: str, info: dict) -> None:
    now, cpu = time.perf_counter(), time.thread_time()
    if phase == "start":
        _pending[0], _pending[1] = now, cpu
    else:
        start, cpu0 = _pending.pop(0, now), _pending.pop(1, cpu)
        for name, value in zip(pauses, (round(time.monotonic() - T0, 3), info["generation"],
                                        round((now - start) * 1000.0, 3), info.get("collected", 0),
                                        _forced[0], round((cpu - cpu0) * 1000.0, 3))):
            pauses[name].append(value)


_written = [0]              # collection records already appended to OUT.json.pauses
_dumping = threading.Lock()  # the sampler thread and atexit


def _dump(path: str, final: bool = False) -> None:
    """Each minute: the new collection records are appended to OUT.json.pauses (one JSON row
    per line), the rest rewrites OUT.json. Rewriting every record each minute (json.dump's
    Python encoder, GIL-bound) took longer as the list grew and stalled the SBC near the end of a
    soak. The frozen count (a walk of the frozen set) only at the end."""
    with _dumping:
        n = len(pauses["t"])
        rows = zip(*(pauses[name][_written[0]:n] for name, _ in PAUSE_FIELDS))
        with open(path + ".pauses", "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
        _written[0] = n
        data = {"pauses_file": path + ".pauses", "minutes": minutes, "tracemalloc": tm, "cycles": cycles,
                "censuses": censuses, "new_objects": newobjs, "gc_threshold": gc.get_threshold(),
                "gc_frozen": gc.get_freeze_count() if final else None, "t0_monotonic": T0}
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(json.dumps(data))
        os.replace(tmp, path)


def _sampler(path: str) -> None:
    tm_start = float(os.environ.get("SOAK_TM_START", 240))
    tm_a = float(os.environ.get("SOAK_TM_A", 300))
    tm_b = float(os.environ.get("SOAK_TM_B", 1500))
    cycles_at = float(os.environ.get("SOAK_CYCLES", 600))
    census_at = [float(x) for x in os.environ.get("SOAK_CENSUS", "300,1500").split(",") if x]
    snap_a = None
    new_at = [x for x in os.environ.get("SOAK_NEW", "").split(",") if x]
    new_kind = new_at.pop() if len(new_at) == 3 else "tuple"
    new_at = [float(x) for x in new_at]
    next_minute = 60.0
    while True:
        time.sleep(1.0)
        t = time.monotonic() - T0
        if t >= tm_start and "started" not in tm:
            tracemalloc.start(FRAMES)
            tm["started"] = round(t, 1)
        # Snapshots are dumped to files and compared by bench/soak.py after the run: comparing
        # them here would hold the GIL for seconds and stall the SBC under test.
        if t >= tm_a and "a_at" not in tm and "started" in tm:
            t1 = time.perf_counter()
            tracemalloc.take_snapshot().dump(path + ".a.snapshot")
            tm["a_at"] = round(t, 1)
            tm["a_ms"] = round((time.perf_counter() - t1) * 1e3, 1)
            tm["a_traced_kib"] = round(tracemalloc.get_traced_memory()[0] / 1024, 1)
        if t >= tm_b and "a_at" in tm and "b_at" not in tm:
            t1 = time.perf_counter()
            tracemalloc.take_snapshot().dump(path + ".b.snapshot")
            tm["b_at"] = round(t, 1)
            tm["b_ms"] = round((time.perf_counter() - t1) * 1e3, 1)
            tm["b_traced_kib"] = round(tracemalloc.get_traced_memory()[0] / 1024, 1)
            tracemalloc.stop()
            tm["stopped"] = round(time.monotonic() - T0, 1)
        if new_at and t >= new_at[0]:
            new_at.pop(0)
            newobjs.append(_new_objects(t, new_kind))
        if census_at and t >= census_at[0]:
            census_at.pop(0)
            censuses.append(_census(t))
        if t >= cycles_at and not cycles:
            # frozen objects too (teamsbc.collector freezes survivors; gc.collect() skips them),
            # with no thread switch between unfreeze, collect and freeze (the SBC's tick freezes)
            t1 = time.perf_counter()
            switch = sys.getswitchinterval()
            sys.setswitchinterval(10.0)
            gc.set_debug(gc.DEBUG_SAVEALL)
            _forced[0] = True
            try:
                frozen = gc.get_freeze_count()
                gc.unfreeze()
                found = gc.collect()
                gc.freeze()
                kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
            finally:
                _forced[0] = False
                gc.set_debug(0)
                sys.setswitchinterval(switch)
                gc.garbage.clear()
            cycles.update({"at": round(t, 1), "objects_in_cycles": found, "frozen_before": frozen,
                           "types": kinds.most_common(20), "ms": round((time.perf_counter() - t1) * 1e3, 1)})
        if t >= next_minute:
            minutes.append({"t": round(t, 1), "rss_kib": _rss_kib(), "gc_count": gc.get_count(),
                            "gc_stats": gc.get_stats(), "tracemalloc_on": tracemalloc.is_tracing(),
                            "probe_kib": _own_kib(), **_memory()})
            next_minute += 60.0
            _dump(path)


def main() -> None:
    path, args = sys.argv[1], sys.argv[2:]
    gc.callbacks.append(_gc_cb)
    atexit.register(_dump, path, True)
    threading.Thread(target=_sampler, args=(path,), name="soak-probe", daemon=True).start()
    sys.argv = ["teamsbc", *args]
    runpy.run_module("teamsbc", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
