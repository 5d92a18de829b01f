"""The sandboxed interpreter's side of `layerprune.execution` (see its docstring for the whole model).

Run as ``python -I _sandbox_child.py INPUT MEMORY_MB CPU_SECONDS REPORT_FD`` by `execution.run_program`, never
imported: it must not import the package (whose __init__ pulls in torch). It reads the program and the
sentinel from stdin, sets resource limits, loads the seccomp filter, installs the Python guard, runs the
program as ``__main__`` and writes ``SENTINEL {"ok": ..., "message": ...}`` to REPORT_FD.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import socket
import subprocess
import sys

FILE_LIMIT = 8 * 2**20  # RLIMIT_FSIZE: no file the program writes (stdout included) exceeds 8 MiB
MESSAGE_CHARS = 300


def _child_main(input_path: str, memory_mb: int, cpu_seconds: int, report_fd: int) -> None:
    real_exit = os._exit
    payload = json.loads(sys.stdin.buffer.read())
    os.unlink(input_path)  # the sentinel must not stay readable
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() sees EOF
    _set_limits(memory_mb, cpu_seconds)
    _install_seccomp()
    _install_guard(os.getcwd())
    report = _run_guarded(payload["program"])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # the program may have closed or replaced it
            pass
    try:
        os.write(report_fd, f"{payload['sentinel']} {json.dumps(report)}\n".encode())
    except OSError:
        real_exit(70)
    real_exit(0 if report["ok"] else 1)  # skip atexit hooks and non-daemon threads of the program


def _run_guarded(program: str) -> dict:
    import traceback
    import types

    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    try:
        exec(compile(program, "program.py", "exec"), main.__dict__)
    except BaseException as exc:  # SystemExit included: exiting early is a failure
        main.__dict__.clear()  # free the program's memory before formatting (MemoryError)
        lines = traceback.format_exception_only(type(exc), exc)
        last = lines[-1].strip() if lines else type(exc).__name__
        return {"ok": False, "message": last[:MESSAGE_CHARS]}
    return {"ok": True}


def _set_limits(memory_mb: int, cpu_seconds: int) -> None:
    memory = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork, no threads (ignored for root)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


# Refused by the seccomp filter (EPERM) whatever the arguments; see _install_seccomp for the conditional ones.
_DENIED_SYSCALLS = (
    "fork", "vfork", "execve", "execveat", "ptrace", "process_vm_writev", "tkill", "setsid", "setpgid",
    "unshare", "setns", "mount", "umount2", "chroot", "pivot_root", "setrlimit", "setuid", "setgid",
    "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "chown", "fchown", "lchown", "fchownat",
    "symlink", "symlinkat", "link", "linkat", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "reboot",
)
_CLONE_THREAD = 0x00010000


def _install_seccomp() -> bool:
    """Load the kernel-enforced filter described in the module docstring; False where libseccomp is absent."""
    try:
        import pyseccomp as sc
    except Exception:  # not Linux, or no libseccomp (pyseccomp raises RuntimeError): rlimits and guard apply
        return False
    deny, me = sc.ERRNO(errno.EPERM), os.getpid()
    rules = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in _DENIED_SYSCALLS:
        rules.add_rule(deny, name)
    rules.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))  # a process, not a thread
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # flags sit behind a pointer: libc falls back to clone
    for name in ("kill", "tgkill"):
        rules.add_rule(deny, name, sc.Arg(0, sc.NE, me))  # signals to itself (raise, abort) stay possible
    rules.add_rule(deny, "prlimit64", sc.Arg(2, sc.NE, 0))  # setting a limit; reading one stays possible
    rules.add_rule(deny, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    rules.load()
    return True


def _install_guard(workdir: str) -> None:
    import _posixsubprocess
    import builtins
    import io

    def inside(path) -> bool:
        if isinstance(path, int):  # an already-open file descriptor
            return True
        real = os.path.realpath(os.fsdecode(os.fspath(path)))
        return real == workdir or real.startswith(workdir + os.sep)

    def denied(name):
        def blocked(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the layerprune sandbox")

        return blocked

    def confined(func, name, n_paths=1):
        def guarded(*args, **kwargs):
            dir_fds = [v for k, v in kwargs.items() if k.endswith("dir_fd") and v is not None]
            if dir_fds or not all(inside(p) for p in args[:n_paths]):
                raise PermissionError(f"{name} outside the working directory is not allowed")
            return func(*args, **kwargs)

        return guarded

    real_open, real_os_open = builtins.open, os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"writing {file!r} outside the working directory is not allowed")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & writing and (kwargs.get("dir_fd") is not None or not inside(path)):
            raise PermissionError(f"writing {path!r} outside the working directory is not allowed")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for name in ("remove", "unlink", "rmdir", "mkdir", "chmod"):
        setattr(os, name, confined(getattr(os, name), f"os.{name}"))
    for name in ("rename", "replace"):
        setattr(os, name, confined(getattr(os, name), f"os.{name}", n_paths=2))
    blocked = [n for n in dir(os) if n.startswith(("exec", "spawn", "posix_spawn"))]
    blocked += ["kill", "killpg", "system", "popen", "fork", "forkpty", "setsid", "setpgid"]
    blocked += ["chroot", "chown", "lchown", "fchown", "symlink", "link", "truncate"]
    for name in blocked:
        if hasattr(os, name):
            setattr(os, name, denied(f"os.{name}"))
    def early_exit(code=0):
        raise SystemExit(code)

    os._exit = early_exit
    subprocess.Popen = denied("subprocess.Popen")
    _posixsubprocess.fork_exec = denied("_posixsubprocess.fork_exec")
    shutil.rmtree, shutil.chown = denied("shutil.rmtree"), denied("shutil.chown")
    resource.setrlimit, resource.prlimit = denied("resource.setrlimit"), denied("resource.prlimit")


if __name__ == "__main__":
    _child_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
