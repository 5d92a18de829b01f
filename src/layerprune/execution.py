"""Run untrusted, model-written Python programs and classify the outcome.

Execution model (after openai/human-eval, but one fresh interpreter per program):

* Each program runs in its own `python -I` subprocess (no user site, no PYTHON* variables, script
  directory not on sys.path) in a new session, so the whole process group can be SIGKILLed on
  timeout. Its working directory, HOME and TMPDIR are a fresh temporary directory; everything the
  run created is removed afterwards, whatever happened.
* The child script (`_sandbox_child.py`, run as `python -I _sandbox_child.py ...`) sets resource limits
  (RLIMIT_AS = memory_mb, RLIMIT_CPU = ceil(timeout) + 1 s, RLIMIT_FSIZE = 8 MiB per file,
  RLIMIT_NPROC = 0 so no processes or threads for non-root, RLIMIT_CORE = 0, RLIMIT_NOFILE = 64),
  loads a seccomp filter, installs a guard that disables destructive calls, then compiles and `exec`s
  the program as `__main__`. stdin is empty.
* Where libseccomp is available (Linux, `pyseccomp`), the seccomp filter makes the kernel refuse new
  processes (fork, vfork, clone without CLONE_THREAD, clone3), exec, signals to other processes, ptrace,
  sockets other than AF_UNIX, raising resource limits, changing uid/gid, namespaces, mounts, links and
  chown, with EPERM. Unlike the guard, ctypes cannot undo it. Threads stay allowed (non-root: NPROC = 0).
* stdout and stderr go to one file capped by RLIMIT_FSIZE; the parent reads only its last few KB.
* The child reports its outcome on a private file descriptor, prefixed with a random sentinel that
  only the harness knows. A run is "passed" only when that report says the program ran to the end
  and the exit code is 0. So `exit(0)`, `sys.exit(0)` or `os._exit(0)` before the asserts is a
  failure ("SystemExit: 0"), never a pass.

Guard decisions (inside the child, before the program runs):
* disabled (raise PermissionError): os.kill/killpg, os.system/popen, os.fork/forkpty, os.exec*,
  os.spawn*, os.posix_spawn*, os.setsid/setpgid, os.chroot, os.chown family, os.symlink/link,
  os.truncate, subprocess.Popen (and so run/call/check_output), _posixsubprocess.fork_exec,
  shutil.rmtree/chown, resource.setrlimit/prlimit;
* confined to the working directory (PermissionError outside it): open/io.open/os.open for writing,
  os.remove/unlink/rmdir/rename/replace/mkdir/chmod (also makedirs, removedirs, pathlib);
* exit()/quit()/sys.exit() raise SystemExit as usual and os._exit raises SystemExit too; the
  harness catches it and records a failure.

What remains: without libseccomp, code that uses ctypes can undo the guard (and as root RLIMIT_NPROC
is not enforced, so only the guard stops fork); with it, ctypes can still write files outside the
working directory wherever the evaluator's user may (the guard stops Python's own file APIs only), and
a program may write many 8 MiB files inside its directory until it times out. `describe_sandbox()`
says which layers are active; results.json records it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

from layerprune.errors import UsageError

_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")  # the child's script
_TAIL_BYTES = 4096  # how much of the output and of the report the parent reads back
_MESSAGE_CHARS = 300

# Substrings that make a syntax error a "Bracket-Syntax" error (seed paper, all_viz.ipynb).
# "does not match opening parenthesis" is covered by "opening parenthesis".
_BRACKET_MARKERS = (
    "was never closed",
    "opening parenthesis",
    "unmatched ')'",
    "unmatched '}'",
    "unmatched ']'",
)
# Every non-None error_class of ExecutionResult, in the seed paper's plotting order.
ERROR_CLASSES = ("assertion", "bracket_syntax", "other_syntax", "name_error", "runtime_error", "timeout")
_SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")
_NAME_ERRORS = ("NameError", "UnboundLocalError")


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program.

    status: "passed" | "failed" | "timeout".
    error_class: None (passed) | "assertion" | "bracket_syntax" | "other_syntax" | "name_error" |
        "runtime_error" | "timeout".
    message: last line of the error, e.g. "SyntaxError: '(' was never closed" ("" when passed).
    duration: wall-clock seconds of the subprocess.
    """

    status: str
    error_class: str | None
    message: str
    duration: float


def classify_error(message: str) -> str:
    """Map the last line of an error ("ExcName: text") to an error class of `ExecutionResult`."""
    name = message.split(":", 1)[0].strip()
    if name in _SYNTAX_ERRORS:
        bracket = any(marker in message for marker in _BRACKET_MARKERS)
        return "bracket_syntax" if bracket else "other_syntax"
    if name in _NAME_ERRORS:
        return "name_error"
    if name == "AssertionError":
        return "assertion"
    return "runtime_error"


@functools.cache
def describe_sandbox() -> dict:
    """Which containment layers a run gets on this machine (recorded in results.json as `code_sandbox`).

    Measured, not guessed: a child applies every layer in a scratch directory and says which took hold."""
    root = tempfile.mkdtemp(prefix="layerprune-probe-")
    try:
        env = {"PATH": os.defpath, "HOME": root, "TMPDIR": root, "LC_ALL": "C.UTF-8"}
        done = subprocess.run([sys.executable, "-I", _CHILD, "--probe"], cwd=root, env=env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60, start_new_session=True)
        active = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        active = {}
    finally:
        _remove_tree(root)
    return {"process": "own session, killed as a group", "rlimits": active.get("rlimits", []),
            "guard": active.get("guard", False), "seccomp": active.get("seccomp", False),
            "landlock_abi": active.get("landlock_abi", 0), "root": os.geteuid() == 0}


_LAYER_NEEDS = {
    "landlock": "Landlock (Linux >= 5.13 with landlock among the LSMs, syscalls not blocked by a container)",
    "seccomp": "seccomp (libseccomp and the pyseccomp package: pip install 'layerprune[eval]')",
}


def missing_layers() -> list[str]:
    """The kernel layers (`landlock`, `seccomp`) this machine cannot apply; [] when the sandbox is complete."""
    active = describe_sandbox()
    return [name for name, on in (("landlock", active["landlock_abi"]), ("seccomp", active["seccomp"])) if not on]


def check_sandbox(allow_weaker: bool = False, missing: list[str] | None = None) -> None:
    """Refuse (UsageError) to run generated code without every kernel layer, unless `allow_weaker`."""
    missing = missing_layers() if missing is None else missing
    if missing and not allow_weaker:
        raise UsageError(f"code sandbox incomplete: no {' and no '.join(_LAYER_NEEDS[m] for m in missing)}; "
                         "fix that, or pass --allow-weaker-sandbox to run generated code without it")


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024,
                allow_weaker_sandbox: bool = False) -> ExecutionResult:
    """Run `program` in a fresh sandboxed interpreter; see the module docstring for the model.

    Raises UsageError when a kernel layer is missing (`check_sandbox`) unless `allow_weaker_sandbox`.

    >>> run_program("assert 1 + 1 == 2").status
    'passed'
    """
    _check_limits(timeout, memory_mb)
    check_sandbox(allow_weaker_sandbox)
    required = [] if allow_weaker_sandbox else list(_LAYER_NEEDS)
    root = tempfile.mkdtemp(prefix="layerprune-exec-")
    try:
        return _run_in(root, program, timeout, memory_mb, required)
    finally:
        _remove_tree(root)


def run_programs(
    programs: Iterable[str], timeout: float = 10.0, workers: int = 2, memory_mb: int = 1024,
    allow_weaker_sandbox: bool = False,
) -> list[ExecutionResult]:
    """Run several programs, `workers` subprocesses at a time; results keep the input order."""
    programs = list(programs)
    _check_limits(timeout, memory_mb)
    check_sandbox(allow_weaker_sandbox)
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}; pass a positive worker count")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout, memory_mb, allow_weaker_sandbox), programs))


def _check_limits(timeout: float, memory_mb: int) -> None:
    if not timeout > 0:
        raise UsageError(f"timeout must be > 0 seconds, got {timeout}; pass e.g. timeout=10")
    if memory_mb < 64:
        raise UsageError(f"memory_mb must be >= 64, got {memory_mb}; pass e.g. memory_mb=1024")


def _run_in(root: str, program: str, timeout: float, memory_mb: int, required: list[str]) -> ExecutionResult:
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    sentinel = secrets.token_hex(16)
    input_path = os.path.join(root, "input.json")
    with open(input_path, "w", encoding="utf-8") as f:
        json.dump({"sentinel": sentinel, "program": program, "require": required}, f)
    cpu_seconds = math.ceil(timeout) + 1
    env = {
        "PATH": os.defpath, "HOME": work, "TMPDIR": work, "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }  # fmt: skip
    with (
        open(input_path, "rb") as stdin,
        open(os.path.join(root, "output"), "w+b") as output,
        open(os.path.join(root, "report"), "w+b") as report,
    ):
        # pass_fds keeps the report's descriptor number in the child, which learns it from argv
        args = (input_path, memory_mb, cpu_seconds, report.fileno())
        cmd = [sys.executable, "-I", _CHILD, *map(str, args)]
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=work, env=env, stdin=stdin, stdout=output, stderr=subprocess.STDOUT,
            pass_fds=(report.fileno(),), start_new_session=True,
        )  # fmt: skip
        try:
            finished = _wait_unreaped(proc.pid, timeout)
            duration = time.monotonic() - start
        finally:  # also on KeyboardInterrupt: no program outlives its run
            _kill_group(proc.pid)  # the zombie leader still holds the pgid, so it cannot be reused
            returncode = proc.wait()
        outcome = _read_report(report, sentinel)
        tail = _read_tail(output)
    if outcome is not None and outcome.get("unavailable"):  # a layer failed in this child after the probe passed
        check_sandbox(False, outcome["unavailable"])
    return _result(finished, returncode, outcome, tail, timeout, duration)


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait until `pid` exits or `timeout` passes, leaving it a zombie (WNOWAIT). True if it exited."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, 0.02)
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_report(report, sentinel: str) -> dict | None:
    report.seek(0)
    line = report.read(_TAIL_BYTES).decode("utf-8", "replace")
    if not line.startswith(sentinel + " "):
        return None
    try:
        return json.loads(line[len(sentinel) + 1 :])
    except json.JSONDecodeError:
        return None


def _read_tail(output) -> str:
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - _TAIL_BYTES))
    return output.read().decode("utf-8", "replace")


def _result(finished, returncode, outcome, tail, timeout, duration) -> ExecutionResult:
    if not finished or returncode == -signal.SIGXCPU:
        return ExecutionResult("timeout", "timeout", f"timed out after {timeout:g} s", duration)
    if outcome is not None and outcome["ok"] and returncode == 0:
        return ExecutionResult("passed", None, "", duration)
    if outcome is not None and not outcome["ok"]:
        message = outcome["message"]
    else:
        message = _fallback_message(returncode, tail)
    message = message[:_MESSAGE_CHARS]
    return ExecutionResult("failed", classify_error(message), message, duration)


def _fallback_message(returncode: int, tail: str) -> str:
    """Message for a child that did not report: killed by a signal, os._exit via ctypes, ..."""
    if returncode < 0:
        try:
            return f"Killed: signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"Killed: signal {-returncode}"
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if returncode != 0 and lines:
        return lines[-1]
    return f"Exited: code {returncode} before the program finished"


def _remove_tree(root: str) -> None:
    # Make every directory writable first, so a program's chmod 000 cannot block the cleanup.
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    shutil.rmtree(root, ignore_errors=True)
