"""An evaluation killed (SIGKILL) after its first task resumes with only the unfinished tasks, and its final
files equal those of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fixtures.tiny_lm import save_tiny_lm

from layerprune.evaluation.runner import evaluate
from layerprune.evaluation.tasks.base import TaskOptions

TASKS = ["arc_easy", "hellaswag", "piqa"]
LIMIT = 12
CHILD = """
import sys
from pathlib import Path
from layerprune.evaluation.runner import evaluate
from layerprune.evaluation.tasks.base import TaskOptions
evaluate(sys.argv[1], {tasks!r}, TaskOptions(data_dir=Path(sys.argv[2]), limit={limit}), out_dir=sys.argv[3],
         batch_size=4, progress=False, resume_dir=sys.argv[4])
"""


def _files(out: Path) -> dict:
    return {"results": json.loads((out / "results.json").read_text())["results"],
            **{p.name: p.read_text() for p in sorted(out.glob("samples_*.jsonl"))}}


def test_killed_evaluation_reruns_only_unfinished_tasks(tmp_path, data_dir, capsys):
    model = save_tiny_lm(tmp_path / "model")
    keep = tmp_path / "kept"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tasks=TASKS, limit=LIMIT), str(model),
                              str(data_dir), str(tmp_path / "crashed"), str(keep)], env=os.environ.copy())
    deadline = time.time() + 300
    while not (keep / "arc_easy.json").exists():  # the first task finished: kill the evaluation at once
        assert child.poll() is None and time.time() < deadline, "the evaluation ended before its first task"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = {p.stem for p in keep.glob("*.json")}
    assert "arc_easy" in finished and finished != set(TASKS), finished
    assert not (tmp_path / "crashed" / "results.json").exists()

    opts = TaskOptions(data_dir=data_dir, limit=LIMIT)
    capsys.readouterr()
    evaluate(str(model), TASKS, opts, out_dir=tmp_path / "resumed", batch_size=4, resume_dir=keep)
    log = capsys.readouterr()
    text = log.out + log.err
    for name in TASKS:
        assert (f"{name}: kept from an earlier run" in text) == (name in finished), name
    evaluate(str(model), TASKS, opts, out_dir=tmp_path / "straight", batch_size=4, progress=False)
    assert _files(tmp_path / "resumed") == _files(tmp_path / "straight")


def test_kept_tasks_of_another_model_or_setting_are_not_reused(tmp_path, data_dir):
    model = save_tiny_lm(tmp_path / "model")
    keep = tmp_path / "kept"
    evaluate(str(model), ["arc_easy"], TaskOptions(data_dir=data_dir, limit=4), batch_size=4, progress=False,
             resume_dir=keep)
    first = (keep / "arc_easy.json").read_text()
    evaluate(str(model), ["arc_easy"], TaskOptions(data_dir=data_dir, limit=5), batch_size=4, progress=False,
             resume_dir=keep)
    again = json.loads((keep / "arc_easy.json").read_text())
    assert (keep / "arc_easy.json").read_text() != first and again["results"]["n"] == 5
