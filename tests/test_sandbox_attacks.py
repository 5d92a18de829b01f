"""The complete sandbox (Landlock + seccomp + rlimits + guard) against programs that try to reach files
outside their directory by every route we know; honest programs still pass under it.

Each attack program ends normally (so "passed") if the attack works; it must instead fail with an OSError
(PermissionError, EXDEV, ...) classified as a runtime error, and the canaries must be untouched.
"""

import os
from pathlib import Path

import pytest

from layerprune.execution import describe_sandbox, missing_layers, run_program, run_programs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    bool(missing_layers()), reason=f"sandbox incomplete on this machine ({', '.join(missing_layers())} missing)")

SECRET = "hf_canary_secret_0123456789"
# ctypes: call libc directly, past the Python guard; a refused call raises OSError with its errno.
LIBC = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def check(r):\n    if r < 0:\n        e = ctypes.get_errno()\n        raise OSError(e, os.strerror(e))\n"
        "    return r\n")


@pytest.fixture
def canaries(tmp_path):
    """A fake home with a token, and a directory with a file, an empty directory and nothing else."""
    home, outside = tmp_path / "home", tmp_path / "outside"
    token = home / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text(SECRET)
    (outside / "empty").mkdir(parents=True)
    victim = outside / "victim.txt"
    victim.write_text("alive")
    before = {p: (p.stat().st_mode, p.stat().st_mtime_ns) for p in (token, victim, outside / "empty")}
    yield {"S": str(token), "HOME": str(home), "V": str(victim), "E": str(outside / "empty"),
           "NEW": str(outside / "new.txt"), "NEWDIR": str(outside / "newdir")}
    assert token.read_text() == SECRET and victim.read_text() == "alive"
    assert {p: (p.stat().st_mode, p.stat().st_mtime_ns) for p in before} == before
    assert sorted(p.name for p in outside.iterdir()) == ["empty", "victim.txt"]
    assert [p.name for p in home.iterdir()] == [".cache"]


READS = {  # each prints the secret if it gets it
    "open": "print(open({S!r}).read())",
    "_io.FileIO": "import _io\nprint(_io.FileIO({S!r}).read())",
    "posix.open": "import posix\nprint(posix.read(posix.open({S!r}, posix.O_RDONLY), 99))",
    "ctypes open": LIBC + "print(os.read(check(libc.open({S!r}.encode(), 0)), 99))",
    "raw openat syscall": LIBC + "nr = {{'x86_64': 257, 'aarch64': 56}}[os.uname().machine]\n"
                                 "print(os.read(check(libc.syscall(nr, -100, {S!r}.encode(), 0, 0)), 99))",
    "/proc/self/root": "print(open('/proc/self/root' + {S!r}).read())",
    "relative ../ path": "import os\nprint(open(os.path.relpath({S!r})).read())",
    "O_PATH reopened via /proc/self/fd": "import os\nfd = os.open({S!r}, os.O_PATH)\n"
                                         "print(open(f'/proc/self/fd/{{fd}}').read())",
    "mmap": "import mmap, posix\nfd = posix.open({S!r}, posix.O_RDONLY)\n"
            "print(mmap.mmap(fd, 0, prot=mmap.PROT_READ)[:])",
    "symlink in the work dir": "import posix\nposix.symlink({S!r}, 'link')\nprint(open('link').read())",
    "ctypes symlink": LIBC + "check(libc.symlink({S!r}.encode(), b'link'))\nprint(open('link').read())",
    "ctypes hard link": LIBC + "check(libc.link({S!r}.encode(), b'hard'))\nprint(open('hard').read())",
    "list the home": "import os\nprint(os.listdir({HOME!r}))",
    "copy into the work dir": "import shutil\nshutil.copyfile({S!r}, 'stolen')\nprint(open('stolen').read())",
    "rename into the work dir": "import posix\nposix.rename({S!r}, 'stolen')\nprint(open('stolen').read())",
    "parent's environment": "import os\nprint(open(f'/proc/{{os.getppid()}}/environ').read())",
    "/etc/shadow": "print(open('/etc/shadow').read())",
    "the repository": f"print(open({str(REPO / 'README.md')!r}).read())",
}
WRITES = {  # each changes, creates or removes something outside if it can
    "ctypes create": LIBC + "os.write(check(libc.open({NEW!r}.encode(), os.O_CREAT | os.O_WRONLY, 0o600)), b'x')",
    "_io.FileIO create": "import _io\n_io.FileIO({NEW!r}, 'w').write(b'x')",
    "posix.open create": "import posix\nposix.open({NEW!r}, posix.O_CREAT | posix.O_WRONLY)",
    "overwrite": "import _io\n_io.FileIO({V!r}, 'r+').write(b'dead!')",
    "ctypes append": LIBC + "os.write(check(libc.open({V!r}.encode(), os.O_WRONLY | os.O_APPEND)), b'dead')",
    "truncate": "import posix\nposix.truncate({V!r}, 0)",
    "ctypes truncate": LIBC + "check(libc.truncate({V!r}.encode(), 0))",
    "unlink": "import posix\nposix.unlink({V!r})",
    "ctypes unlink": LIBC + "check(libc.unlink({V!r}.encode()))",
    "rmdir": "import posix\nposix.rmdir({E!r})",
    "mkdir": "import posix\nposix.mkdir({NEWDIR!r})",
    "rename out of the work dir": "open('x', 'w').write('x')\nimport posix\nposix.rename('x', {NEW!r})",
    "ctypes rename across directories": LIBC + "check(libc.rename({V!r}.encode(), b'stolen'))",
    "mmap write": "import mmap, posix\nm = mmap.mmap(posix.open({V!r}, posix.O_RDWR), 0)\nm[:4] = b'dead'",
    "O_PATH reopened for writing": "import os\nfd = os.open({V!r}, os.O_PATH)\n"
                                   "open(f'/proc/self/fd/{{fd}}', 'w').write('dead')",
    "symlink then write": LIBC + "check(libc.symlink({V!r}.encode(), b'l'))\nopen('l', 'w').write('dead')",
    "hard link then write": LIBC + "check(libc.link({V!r}.encode(), b'h'))\nopen('h', 'w').write('dead')",
    "chmod": "import posix\nposix.chmod({V!r}, 0)",
    "ctypes chmod": LIBC + "check(libc.chmod({V!r}.encode(), 0))",
    "utime": "import posix\nposix.utime({V!r}, (0, 0))",
    "ctypes mknod": LIBC + "check(libc.mknod({NEW!r}.encode(), 0o100600, 0))",
}


def test_no_route_reads_or_writes_outside_the_work_directory(canaries):
    names = sorted(READS) + sorted(WRITES)
    programs = [{**READS, **WRITES}[name].format(**canaries) for name in names]
    results = run_programs(programs, timeout=10.0, workers=2)
    for name, result in zip(names, results):
        assert (result.status, result.error_class) == ("failed", "runtime_error"), (name, result)
        assert "Error" in result.message and SECRET not in result.message, (name, result)


def test_every_kernel_layer_is_recorded():
    sandbox = describe_sandbox()
    assert sandbox["landlock_abi"] >= 1 and sandbox["seccomp"] and sandbox["guard"]
    assert sandbox["rlimits"] == ["AS", "CPU", "FSIZE", "NPROC", "CORE", "NOFILE"]


def test_only_the_python_installation_is_readable_under_home():
    # The interpreter's own files stay readable (imports work); its parent directories do not.
    import sys

    prefix = os.path.realpath(sys.prefix)
    program = (f"import os, sys\nassert os.listdir({prefix!r})\n"
               f"os.listdir({os.path.dirname(prefix)!r})")
    result = run_program(program, timeout=10.0)
    assert result.status == "failed" and result.message.startswith("PermissionError"), result


HONEST = {
    "stdlib": ("import math, re, collections, itertools, heapq, functools, bisect, string, random, hashlib, json\n"
               "import decimal, fractions, statistics, datetime, zoneinfo, typing, dataclasses, copy, operator\n"
               "assert heapq.nsmallest(2, [3, 1, 2]) == [1, 2] and math.comb(5, 2) == 10\n"
               "assert re.findall(r'\\d+', 'a1b22') == ['1', '22'] and collections.Counter('aab')['a'] == 2\n"
               "assert zoneinfo.ZoneInfo('Europe/Paris').key and datetime.datetime.now().year > 2000\n"
               "assert len(hashlib.sha256(random.randbytes(8)).hexdigest()) == 64\n"),
    "numpy": "import numpy as np\nassert np.linalg.norm(np.ones(4)) == 2.0",
    "files in its own directory": ("import os, pathlib, shutil, tempfile\n"
                                   "pathlib.Path('a/b').mkdir(parents=True)\nopen('a/b/f.txt', 'w').write('hi')\n"
                                   "os.rename('a/b/f.txt', 'g.txt')\nassert open('g.txt').read() == 'hi'\n"
                                   "with tempfile.TemporaryDirectory() as d:\n    open(d + '/t', 'w').write('x')\n"
                                   "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\n"
                                   "shutil.rmtree('a')\nopen(os.devnull, 'w').write('discarded')\n"
                                   "assert sorted(os.listdir()) == ['g.txt']"),
}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_programs_pass_under_the_full_sandbox(name):
    if name == "numpy":
        pytest.importorskip("numpy")
    result = run_program(HONEST[name], timeout=20.0)
    assert result.status == "passed", result
