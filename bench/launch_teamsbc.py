"""Run `teamsbc run ...` with an interpreter-level tweak, for what-if measurements only
(bench.py --variants): the product is always measured as `python -m teamsbc` too.

    python bench/launch_teamsbc.py gc-freeze run -c teamsbc.yaml

Variants:
  gc-freeze   import teamsbc and its dependencies, gc.freeze() them (the cyclic collector
              never walks start-up objects again), and raise the generation-0 threshold
              700 -> 50,000 so collections are rarer (each is still bounded by what it walks)
  gc-off      gc.disable(): no cyclic collection at all (teamsbc's garbage is freed by
              reference counting; a gen-2 collection under load found ~0 cycles)
  uvloop      asyncio on libuv (uvloop's event loop policy), when uvloop is installed
"""
import gc
import runpy
import sys


def main() -> None:
    variant = sys.argv[1]
    args = sys.argv[2:]
    if variant == "gc-freeze":
        __import__("teamsbc.app")  # the imports are what we want frozen
        __import__("teamsbc.cli")
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    elif variant == "gc-off":
        gc.disable()
    elif variant == "uvloop":
        import asyncio

        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    sys.argv = ["teamsbc", *args]
    runpy.run_module("teamsbc", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
