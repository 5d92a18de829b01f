"""layerprune status ROOT"""

from layerprune.study.store import Store

NAME = "status"
HELP = "list a study's steps with their state, timings and outputs"


def add_arguments(p):
    p.add_argument("root", help="study output folder")


def run(args) -> int:
    store = Store(args.root)
    rows = store.rows()
    for r in rows:
        state = "done" if store.is_done(r["id"]) else ("interrupted" if r["status"] == "running" else r["status"])
        secs = f"{r['seconds']:.1f}s" if r["seconds"] is not None and state == "done" else ""
        print(f"{state:<11} {r['kind']:<7} {r['label']:<40} {secs:>9}  {r['error'] or ''}")
    done = sum(store.is_done(r["id"]) for r in rows)
    print(f"{done}/{len(rows)} steps done")
    return 0
