"""Per-program cost of the Landlock layer of the code sandbox: the same programs run through
`execution.run_program` with the real child (Landlock on) and with a copy of the child whose Landlock step
is skipped (the sandbox before Landlock: rlimits, seccomp, guard), interleaved so machine load hits both
alike. Prints the median wall time per program of each, their difference (target: <= 20 ms added) and ratio,
and the time of the Landlock step alone (resolving the allowed paths, building and applying the ruleset).

    python benchmarks/bench_sandbox.py [--runs 40]

Measured 2026-12-01 on a shared, loaded 2-core VM (kernel 6.18, Landlock ABI 7), --runs 30: the Landlock step
alone 1.9 ms; per program (median, before -> after) 268 -> 276 ms, 312 -> 317 ms, 321 -> 331 ms, i.e. +4 to
+10 ms end to end, within the machine's noise (other runs gave -7 to +11 ms).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from layerprune import execution

PROGRAMS = {
    "assert": "assert 1 + 1 == 2",
    "humaneval-like": ("from typing import List\n\ndef f(xs: List[int]) -> int:\n    return sum(sorted(xs)[:2])\n\n"
                       "assert f([3, 1, 2]) == 3\n"),
    "imports + files": ("import re, collections, itertools, heapq, functools, tempfile\n"
                        "with tempfile.TemporaryDirectory() as d:\n    open(d + '/x', 'w').write('x')\n"),
}
STEP = "    landlock = _install_landlock(workdir)\n"


def child_without_landlock(folder: Path) -> Path:
    text = Path(execution._CHILD).read_text(encoding="utf-8")
    assert text.count(STEP) == 1, "the child's Landlock step moved; update STEP"
    path = folder / "_sandbox_child_no_landlock.py"
    path.write_text(text.replace(STEP, "    landlock = 0  # benchmark baseline\n"), encoding="utf-8")
    return path


# Loads the child's code as a module in a fresh interpreter and times its Landlock step alone, in ms.
STEP_TIMER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("child", sys.argv[1])
child = importlib.util.module_from_spec(spec)
spec.loader.exec_module(child)
try:
    import pyseccomp  # as in the child: imported (with ctypes) before the Landlock step
except Exception:
    pass
start = time.perf_counter()
abi = child._install_landlock(sys.argv[2])
print((time.perf_counter() - start) * 1000 if abi else "nan")
"""


def landlock_step_ms(folder: str, runs: int) -> float:
    cmd = [sys.executable, "-I", "-c", STEP_TIMER, execution._CHILD, folder]
    return statistics.median(float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                             for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs of each program with each child")
    args = parser.parse_args()
    print(f"sandbox here: {execution.describe_sandbox()}")
    real = execution._CHILD
    with tempfile.TemporaryDirectory() as folder:
        print(f"the Landlock step alone, inside the child: {landlock_step_ms(folder, 10):.2f} ms (median of 10)")
        baseline = str(child_without_landlock(Path(folder)))
        for name, program in PROGRAMS.items():
            times = {"before": [], "after": []}
            for _ in range(args.runs):
                for label, child in (("before", baseline), ("after", real)):
                    execution._CHILD = child
                    result = execution.run_program(program, timeout=10.0, allow_weaker_sandbox=True)
                    assert result.status == "passed", (label, result)
                    times[label].append(result.duration)
            execution._CHILD = real
            before, after = (statistics.median(times[k]) * 1000 for k in ("before", "after"))
            print(f"{name:16s} before (no Landlock) {before:7.1f} ms   after (Landlock) {after:7.1f} ms   "
                  f"added {after - before:+6.1f} ms   ratio {after / before:.3f}")


if __name__ == "__main__":
    main()
