"""The report's headline is generated from the summary's numbers: a crafted summary with known answers (a clear
safe depth, a criterion that is never safe, a task type where nothing is safe, a tie between healing arms, then a
clear winner) gives sentences whose every number is the summary's."""

import re

from layerprune.study.analysis import _safe_depth
from layerprune.study.narrative import headline, scale_line

NAN = float("nan")


def _e(v, lo, hi):
    return {"value": v, "lo": lo, "hi": hi}


# (criterion, num_drop, arm, kind) -> retention; 12 layers, cuts of 3 and 6 (25%, 50%)
RET = {
    ("bi", 3, "none", "classification"): _e(0.95, 0.92, 0.97),
    ("bi", 6, "none", "classification"): _e(0.91, 0.90, 0.93),
    ("bi", 3, "sgr", "classification"): _e(0.96, 0.94, 0.98),
    ("bi", 6, "sgr", "classification"): _e(0.93, 0.91, 0.95),   # ties bi/none at 50%, higher value: the one named
    ("bi", 3, "original", "classification"): _e(0.94, 0.91, 0.97),
    ("bi", 6, "original", "classification"): _e(0.85, 0.80, 0.90),
    ("reverse", 3, "none", "classification"): _e(0.70, 0.60, 0.80),  # reverse: never safe
    ("reverse", 6, "none", "classification"): _e(0.50, 0.40, 0.60),
    ("bi", 3, "none", "generative"): _e(0.60, 0.50, 0.70),
    ("bi", 6, "none", "generative"): _e(0.20, 0.10, 0.30),
    ("bi", 3, "sgr", "generative"): _e(0.80, 0.70, 0.88),            # best generative at 25%, still unsafe
    ("bi", 6, "sgr", "generative"): _e(0.40, 0.30, 0.50),
    ("bi", 3, "original", "generative"): _e(0.78, 0.69, 0.86),
    ("bi", 6, "original", "generative"): _e(0.35, 0.25, 0.45),
    ("reverse", 3, "none", "generative"): _e(0.65, 0.55, 0.75),      # overlaps reverse classification 70 [60, 80]
    ("reverse", 6, "none", "generative"): _e(0.10, 0.05, 0.15),
}


def _summary(gaps):
    rows = [{"model": "m", "criterion": c, "num_drop": n, "ratio": n / 12, "arm": a, "kind": k, "retention": e}
            for (c, n, a, k), e in RET.items()]
    for r in rows:
        if r["arm"] != "none":
            r["recovery"] = _e(0.5, 0.2, 0.8)
    tasks = [{"model": "m", "criterion": None, "num_drop": 0, "ratio": 0.0, "arm": "none",
              "scores": {"facts": {"metric": "acc", "kind": "classification", "value": 0.9, "n": 50}}}]
    tasks += [{"model": "m", "criterion": c, "num_drop": n, "ratio": n / 12, "arm": a,
               "scores": {"facts": {"metric": "acc", "kind": "classification", "value": 0.8, "n": 50}}}
              for (c, n, a) in dict.fromkeys(k[:3] for k in RET)]
    return {"threshold": 0.9, "confidence": 0.95, "bootstrap": 100, "variants": len(tasks), "evaluated": len(tasks),
            "tasks": tasks, "retention": rows, "safe_depth": _safe_depth(rows, 0.9), "arm_gaps": gaps,
            "speed": [], "layer_scores": [], "diagnostics": []}


def _gaps(sgr_minus_original):
    return [{"model": "m", "criterion": "bi", "num_drop": n, "ratio": n / 12, "kind": k, "a": "sgr", "b": "original",
             "gap": sgr_minus_original[(n, k)]} for n in (3, 6) for k in ("classification", "generative")]


TIE = _gaps({(3, "classification"): _e(0.02, -0.05, 0.09), (6, "classification"): _e(0.10, -0.01, 0.2),
             (3, "generative"): _e(-0.03, -0.1, 0.04), (6, "generative"): _e(0.05, NAN, NAN)})
CLEAR = _gaps({(3, "classification"): _e(0.02, -0.05, 0.09), (6, "classification"): _e(0.10, 0.02, 0.2),
               (3, "generative"): _e(-0.03, -0.1, 0.04), (6, "generative"): _e(0.15, 0.05, 0.25)})


def test_headline_answers_from_the_numbers():
    s = _summary(TIE)
    lines = headline(s)
    assert 1 <= len(lines) <= 5
    cls, gen, gap, heal = lines
    # a clear safe depth: 50% = 6 of 12 layers; bi/sgr and bi/none both reach it, bi/sgr retains more there
    assert cls.startswith("Classification (retention CI lower bound ≥ 90%): up to 50% of layers (6 of 12) can be "
                          "removed with bi healed with sgr, retaining 93% [91, 95] of baseline")
    assert "1 other criterion/arm pair reaches it too" in cls
    assert "reverse is not safe at any tested ratio" in cls  # the criterion that never is safe
    # nothing generative is safe: the best combination at the smallest tested ratio is named with its interval
    assert gen == ("Generative (retention CI lower bound ≥ 90%): no criterion or healing arm is safe even at 25% of "
                   "layers removed (best there: bi healed with sgr, 80% [70, 88]).")
    # unhealed classification vs generative over the 4 cuts: ranges and interval verdicts
    assert gap == ("Without healing, at 25–50% of layers removed classification retains 50–95% of baseline and "
                   "generative reasoning 10–65%; classification retains more in 3, less in 0 and an "
                   "indistinguishable amount in 1 of 4 cuts (non-overlapping 95% intervals).")
    # a tie between arms: every interval crosses 0 (or is undefined)
    assert heal == ("Healing arms original and sgr cannot be told apart: all 4 paired comparisons of their recovery "
                    "have an interval that includes 0.")


def test_headline_names_the_arm_that_wins_where_the_data_can_tell():
    heal = headline(_summary(CLEAR))[-1]
    assert heal == ("Best healing arm where the data can tell: sgr, which recovers more in 2 and less in 0 of its 4 "
                    "paired comparisons with original; 2 of all 4 comparisons cannot tell.")


def test_every_headline_percentage_is_a_summary_number():
    s = _summary(CLEAR)
    known = {round(100 * x) for r in s["retention"] for x in r["retention"].values()}
    known |= {round(100 * r["ratio"]) for r in s["retention"]} | {round(100 * s["threshold"]),
                                                                  round(100 * s["confidence"])}
    text = " ".join(headline(s))
    found = {int(x) for x in re.findall(r"(\d+)(?=%|–|\]|,\s*\d+\])", text)}
    assert found and found <= known, found - known


def test_scale_line_counts_the_study():
    assert scale_line(_summary(TIE), "crafted") == (
        "crafted — 1 model (m, 12 layers) · 2 criteria × 2 ratios (25%, 50%) · 3 healing arms (none, sgr, original)"
        " · 1 task, 50 documents each · 9 of 9 planned models evaluated")
