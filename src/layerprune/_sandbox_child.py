"""The sandboxed interpreter's side of `layerprune.execution` (see its docstring for the whole model).

Run as ``python -I _sandbox_child.py INPUT MEMORY_MB CPU_SECONDS REPORT_FD`` by `execution.run_program`, never
imported: it must not import the package (whose __init__ pulls in torch). It reads the program and the
sentinel from stdin, sets resource limits, applies Landlock, loads the seccomp filter, installs the Python guard,
runs the program as ``__main__`` and writes ``SENTINEL {"ok": ..., "message": ...}`` to REPORT_FD (or
``{"ok": false, "unavailable": [layers]}`` when a layer the parent requires could not be applied).
``python -I _sandbox_child.py --probe`` applies every layer in its working directory and prints which took hold.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
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
    missing = _apply_layers(os.getcwd(), memory_mb, cpu_seconds, payload["homes"])[1]
    required = [name for name in missing if name in payload["require"]]
    if required:  # the parent checked this machine, so this is rare: refuse rather than run weaker
        os.write(report_fd, f"{payload['sentinel']} {json.dumps({'ok': False, 'unavailable': required})}\n".encode())
        real_exit(71)
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


def _apply_layers(workdir: str, memory_mb: int, cpu_seconds: int, homes=()) -> tuple[dict, list[str]]:
    """Confine this process: rlimits, Landlock, seccomp, guard (Landlock before seccomp, whose filter need not
    then allow the Landlock syscalls; both kernel layers before the guard and the program).
    Returns (what is active, as `describe_sandbox` reports it; the names of the layers that failed)."""
    try:
        import pyseccomp  # noqa: F401  imported before Landlock: it runs ldconfig and loads libseccomp
    except Exception:  # not Linux, or no libseccomp (pyseccomp raises RuntimeError)
        pass
    _set_limits(memory_mb, cpu_seconds)
    landlock = _install_landlock(workdir, homes)
    seccomp = _install_seccomp()
    _install_guard(workdir)
    active = {"seccomp": seccomp, "landlock_abi": landlock, "rlimits": list(LIMITS), "guard": True}
    missing = [name for name, on in (("landlock", landlock), ("seccomp", seccomp)) if not on]
    return active, missing


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


LIMITS = ("AS", "CPU", "FSIZE", "NPROC", "CORE", "NOFILE")


def _set_limits(memory_mb: int, cpu_seconds: int) -> None:
    memory = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork, no threads (ignored for root)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


# Landlock (Linux >= 5.13), called through its three syscalls. x86_64 and aarch64 share the numbers.
_LANDLOCK_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create_ruleset, add_rule, restrict_self
_PR_SET_NO_NEW_PRIVS = 38
# File-system rights (linux/landlock.h), each with the ABI that introduced it.
_FS_RIGHTS = {"execute": (1 << 0, 1), "write_file": (1 << 1, 1), "read_file": (1 << 2, 1), "read_dir": (1 << 3, 1),
              "remove_dir": (1 << 4, 1), "remove_file": (1 << 5, 1), "make_char": (1 << 6, 1),
              "make_dir": (1 << 7, 1), "make_reg": (1 << 8, 1), "make_sock": (1 << 9, 1), "make_fifo": (1 << 10, 1),
              "make_block": (1 << 11, 1), "make_sym": (1 << 12, 1), "refer": (1 << 13, 2), "truncate": (1 << 14, 3),
              "ioctl_dev": (1 << 15, 5)}
_NET_TCP = 0b11  # bind_tcp | connect_tcp (ABI 4): handled and never granted, so no TCP at all
_SCOPES = 0b11  # abstract unix sockets | signals (ABI 6): nothing outside this process's domain
_FILE_ONLY = ("execute", "write_file", "read_file", "truncate", "ioctl_dev")  # the rights a rule on a file may hold


def _rights(abi: int, *names: str) -> int:
    return sum(bit for name, (bit, since) in _FS_RIGHTS.items() if since <= abi and name in names)


def _read_roots(workdir: str, homes) -> tuple[set[str], set[str]]:
    """(directories, files) the interpreter and honest programs read, resolved now: the Python installation
    and its site-packages, the shared libraries' directories, the loader cache, time zones, random devices.
    Never "/", nor a home directory (`homes`: the evaluator's $HOME and passwd entry) or the temporary
    directory of the runs (the parent of `workdir`), nor one of their ancestors."""
    import pwd
    import site

    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    python = {os.path.realpath(p) + os.sep for p in python}
    dirs = set(python)
    dirs |= {"/usr/share/zoneinfo", "/usr/lib/locale"}
    files = {sys.executable, "/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/random", "/dev/zero"}
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:  # libpython, libc, lib-dynload, ...
        for line in maps:
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith("/") and not path.endswith("(deleted)"):
                dirs.add(os.path.dirname(path))
    try:
        homes = (*homes, pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a uid without a passwd entry (containers): the parent's $HOME only
        pass
    homes = {os.path.realpath(p) + os.sep for p in homes}
    private = homes | {os.path.dirname(workdir) + os.sep}

    def allowed(path: str) -> bool:  # under a home directory, only the Python installation
        inside = path + os.sep
        return (os.path.exists(path) and path != "/" and not any(p.startswith(inside) for p in private)
                and (not any(inside.startswith(h) for h in homes) or any(inside.startswith(p) for p in python)))

    dirs = {d for d in map(os.path.realpath, dirs) if allowed(d) and os.path.isdir(d)}
    dirs = {d for d in dirs if not any(d.startswith(other + os.sep) for other in dirs)}  # a rule covers its subtree
    files = {f for f in map(os.path.realpath, files) if allowed(f) and (os.path.isfile(f) or f.startswith("/dev/"))}
    return dirs, files


def _install_landlock(workdir: str, homes=()) -> int:
    """Allow writes only under `workdir` and reads only of `_read_roots()`, for this process and all it
    starts; the rest of the file system is refused by the kernel (EACCES). Returns the ABI, 0 if unavailable."""
    import ctypes

    numbers = _LANDLOCK_SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return 0
    create, add_rule, restrict = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    long = ctypes.c_long  # variadic arguments: pass full registers, so no stray upper bits reach the kernel
    abi = libc.syscall(long(create), None, long(0), long(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return 0
    handled = sum(bit for bit, since in _FS_RIGHTS.values() if since <= abi)
    # struct landlock_ruleset_attr {u64 handled_access_fs, handled_access_net, scoped}: pass the fields this ABI knows
    fields = [handled] + ([_NET_TCP] if abi >= 4 else []) + ([_SCOPES] if abi >= 6 else [])
    attr = (ctypes.c_uint64 * len(fields))(*fields)
    ruleset = libc.syscall(long(create), ctypes.byref(attr), long(ctypes.sizeof(attr)), long(0))
    if ruleset < 0:
        return 0
    read_dir = _rights(abi, "execute", "read_file", "read_dir")
    everything = handled & ~_rights(abi, "make_char", "make_block", "ioctl_dev")  # no device nodes, even as root
    dirs, files = _read_roots(workdir, homes)
    rules = [(d, read_dir) for d in dirs] + [(f, _rights(abi, "execute", "read_file")) for f in files]
    rules += [(os.devnull, _rights(abi, "read_file", "write_file", "truncate")), (workdir, everything)]
    try:
        for path, access in rules:
            if not _add_path_rule(libc, add_rule, ruleset, path, access):
                return 0
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, long(1), long(0), long(0), long(0)) != 0 or \
                libc.syscall(long(restrict), long(ruleset), long(0)) != 0:
            return 0
    finally:
        os.close(ruleset)
    return abi


def _add_path_rule(libc, add_rule: int, ruleset: int, path: str, access: int) -> bool:
    import ctypes

    class PathBeneath(ctypes.Structure):  # struct landlock_path_beneath_attr, packed: u64 + s32
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:  # vanished since it was resolved: nothing to allow
        return True
    try:
        if not os.path.isdir(path):
            access &= sum(_FS_RIGHTS[name][0] for name in _FILE_ONLY)
        attr = PathBeneath(access, fd)
        long = ctypes.c_long
        return libc.syscall(long(add_rule), long(ruleset), long(1), ctypes.byref(attr), long(0)) == 0  # PATH_BENEATH
    finally:
        os.close(fd)


# Refused by the seccomp filter (EPERM) whatever the arguments; see _install_seccomp for the conditional ones.
_DENIED_SYSCALLS = (
    "fork", "vfork", "execve", "execveat", "ptrace", "process_vm_writev", "tkill", "setsid", "setpgid",
    "unshare", "setns", "mount", "umount2", "chroot", "pivot_root", "setrlimit", "setuid", "setgid",
    "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "chown", "fchown", "lchown", "fchownat",
    "symlink", "symlinkat", "link", "linkat", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "reboot",
    # Landlock has no right for metadata: refuse it everywhere (root could chmod 000 a readable file by fd)
    "chmod", "fchmod", "fchmodat", "utime", "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr",
    "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    # ways around path checks or the filter itself: file handles, io_uring, reading other processes
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "process_vm_readv", "mknod", "mknodat",
)
_NEWER_DENIED = ("fchmodat2", "setxattrat", "removexattrat")  # unknown to older libseccomp: skipped there
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
    for name in _NEWER_DENIED:
        try:
            rules.add_rule(deny, name)
        except (OSError, ValueError):  # libseccomp does not know it (nor, then, does libc call it)
            pass
    rules.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))  # a process, not a thread
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # flags sit behind a pointer: libc falls back to clone
    for name in ("kill", "tgkill"):
        rules.add_rule(deny, name, sc.Arg(0, sc.NE, me))  # signals to itself (raise, abort) stay possible
    rules.add_rule(deny, "prlimit64", sc.Arg(2, sc.NE, 0))  # setting a limit; reading one stays possible
    # No sockets at all (a unix socket path, e.g. a container runtime's, is a route out that Landlock ABI <= 7
    # does not guard); socketpair stays. Sending to an address from a socketpair end is refused too.
    rules.add_rule(deny, "socket")
    rules.add_rule(deny, "sendto", sc.Arg(4, sc.NE, 0))
    for name in ("sendmsg", "sendmmsg"):
        rules.add_rule(deny, name)
    rules.load()
    return True


def _install_guard(workdir: str) -> None:
    import _posixsubprocess
    import builtins
    import io

    def inside(path, dir_fd=None) -> bool:
        if isinstance(path, int):  # an already-open file descriptor
            return True
        path = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(path):  # relative to an open directory (shutil.rmtree)
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = os.path.realpath(path)
        return real in (workdir, os.devnull) or real.startswith(workdir + os.sep)

    def denied(name):
        def blocked(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the layerprune sandbox")

        return blocked

    def confined(func, name, n_paths=1):
        def guarded(*args, **kwargs):
            two_dirs = [v for k, v in kwargs.items() if k in ("src_dir_fd", "dst_dir_fd") and v is not None]
            if two_dirs or not all(inside(p, kwargs.get("dir_fd")) for p in args[:n_paths]):
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
    shutil.rmtree, shutil.chown = confined(shutil.rmtree, "shutil.rmtree"), denied("shutil.chown")
    resource.setrlimit, resource.prlimit = denied("resource.setrlimit"), denied("resource.prlimit")


def _probe() -> None:
    """``python -I _sandbox_child.py --probe`` in a scratch working directory: print what `_apply_layers` manages."""
    active, _ = _apply_layers(os.getcwd(), 256, 5)
    sys.stdout.write(json.dumps(active))


if __name__ == "__main__" and sys.argv[1:] == ["--probe"]:
    _probe()
elif __name__ == "__main__":
    _child_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
