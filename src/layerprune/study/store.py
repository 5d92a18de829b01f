"""A study root on disk, and its run index.

    ROOT/config.yaml, ROOT/plan.json     what was asked and how it was planned
    ROOT/steps/<step id>/                 a finished step's outputs + step.json; appears atomically (rename)
    ROOT/work/<step id>/                  scratch a long step may resume from (trainer checkpoints, SGR shards)
    ROOT/index.sqlite                     every step: kind, label, status, times, output path, error
    ROOT/.lock                            held (flock) by the one executor working on this root

A step is complete iff `steps/<id>/step.json` exists: it is written inside a temporary directory that is renamed
into place only after the step succeeded, so a crash (even kill -9) never leaves a half-finished step behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Iterator

from layerprune.errors import UsageError
from layerprune.provenance import make_publishable

_SCHEMA = """CREATE TABLE IF NOT EXISTS steps (
    id TEXT PRIMARY KEY, kind TEXT, label TEXT, status TEXT, started REAL, finished REAL, seconds REAL,
    output TEXT, error TEXT, runs INTEGER DEFAULT 0)"""


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def step_dir(self, step_id: str) -> Path:
        return self.root / "steps" / step_id

    def work_dir(self, step_id: str) -> Path:
        return self.root / "work" / step_id

    def is_done(self, step_id: str) -> bool:
        return (self.step_dir(step_id) / "step.json").is_file()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on the root; released by the OS when the process dies, so kill -9 never wedges it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"another layerprune study is running on {self.root}; wait for it or use another --root") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def producing(self, step_id: str, meta: dict) -> Iterator[Path]:
        """Yield a temp dir for the step's outputs; on success write step.json and rename it into place."""
        final = self.step_dir(step_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{step_id}.", dir=final.parent))
        try:
            yield tmp
            (tmp / "step.json").write_text(json.dumps(meta, indent=2) + "\n")
            make_publishable(tmp)
            if final.exists():  # an incomplete leftover (no step.json) from a crashed run
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def clean_partial(self) -> None:
        """Remove temp dirs of steps that were running when a previous executor died."""
        for p in (self.root / "steps").glob(".*"):
            shutil.rmtree(p, ignore_errors=True)

    # -- run index ------------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.root / "index.sqlite", timeout=30)
        con.execute(_SCHEMA)
        return con

    def register(self, steps) -> None:
        with contextlib.closing(self._db()) as con, con:
            for s in steps:
                con.execute("INSERT OR IGNORE INTO steps (id, kind, label, status) VALUES (?, ?, ?, 'pending')",
                            (s.id, s.kind, s.label))

    def mark(self, step_id: str, status: str, error: str | None = None) -> None:
        now = time.time()
        with contextlib.closing(self._db()) as con, con:
            if status == "running":
                con.execute("UPDATE steps SET status=?, started=?, finished=NULL, error=NULL, runs=runs+1 WHERE id=?",
                            (status, now, step_id))
            else:
                con.execute("UPDATE steps SET status=?, finished=?, seconds=? - started, output=?, error=? WHERE id=?",
                            (status, now, now, str(self.step_dir(step_id)), error, step_id))

    def rows(self) -> list[dict]:
        if not (self.root / "index.sqlite").exists():
            raise UsageError(f"{self.root} is not a study root (no index.sqlite); run `layerprune study` first")
        with contextlib.closing(self._db()) as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM steps ORDER BY rowid")]
