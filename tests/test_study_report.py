"""Report layout and figures from crafted summaries: absurd values stay off the axis range and are listed, colours
are one mapping, a new healing arm flows into figures and tables without code changes, and the HTML puts the
answer before the first collapsible section, self-contained."""

import copy
import re

from matplotlib.colors import to_hex
from test_study_headline import CLEAR, _e, _summary

from layerprune.study import figures, report
from layerprune.study.figures import colour


def _speed(decode_at_half):
    return [{"model": "m", "criterion": "bi", "num_drop": n, "ratio": n / 12, "prefill_speedup": 1.1 + n / 30,
             "decode_speedup": decode_at_half if n == 6 else 1.2, "ideal_speedup": 12 / (12 - n)} for n in (3, 6)]


def test_absurd_speedup_keeps_the_axis_plausible_and_is_marked():
    s = _summary(CLEAR)
    s["speed"] = _speed(1e8)
    fig = figures.speedup(s, "m")
    lo, hi = fig.axes[0].get_ylim()
    assert 0 <= lo and hi <= 4.0  # 2 × the largest ideal speedup (2×), never 10⁸
    assert len(fig.offscale) == 1 and "1e+08" in fig.offscale[0] and "decode" in fig.offscale[0]
    # the point is drawn at the edge with a triangle marker
    edge = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "^"]
    assert edge and edge[0].get_ydata()[0] == hi
    # a sane measurement draws no marker and lists nothing
    s["speed"] = _speed(1.9)
    fig = figures.speedup(s, "m")
    assert fig.offscale == [] and fig.axes[0].get_ylim()[1] < 2.5


def test_per_answer_speed_is_optional_and_flows_through():
    from layerprune.study.tables import speed_table

    s = _summary(CLEAR)
    s["speed"] = _speed(1.5)
    (_, head, _rows), = speed_table(s)
    assert head == ["criterion", "removed (layers)", "ideal ×", "decode ×", "prefill ×"]
    for r in s["speed"]:
        r["answer_speedup"] = 1.4 if r["num_drop"] == 3 else None  # measured once, flagged unreliable once
    (_, head, rows), = speed_table(s)
    assert head[-1] == "answer ×" and [r[-1] for r in rows] == ["1.40", "n/a"]
    fig = figures.speedup(s, "m")
    assert "answer" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_absurd_retention_is_clipped_and_listed_in_the_report(tmp_path):
    s = _summary(CLEAR)
    s["retention"][0]["retention"] = _e(80.0, 70.0, 90.0)  # a near-zero baseline: 8000% "retention"
    fig = figures.retention_vs_ratio(s, "m")
    assert all(ax.get_ylim()[1] <= 1.5 for ax in fig.axes if ax.get_visible() and ax.get_title())
    assert any("retention 80" in n for n in fig.offscale)
    s["provenance"] = {"created": "now", "versions": {"layerprune": "x", "transformers": "y"}}
    md = report._markdown(report.build_blocks(s, {"name": "t"}, tmp_path))
    assert "Off the plotted range, drawn at the edge with ▲/▼: retention 80" in md
    assert "8000 [7000, 9000]" in md  # the table keeps the real value


def _line_colours(fig):
    return {ln.get_label().split(" · ")[0]: to_hex(ln.get_color()) for ax in fig.axes for ln in ax.get_lines()
            if " · " in ln.get_label()}


def test_a_new_arm_flows_through_with_one_colour_per_name(tmp_path):
    s = _summary(CLEAR)
    extra = [copy.deepcopy(r) | {"arm": "kd"} for r in s["retention"] if r["arm"] == "sgr"]
    s["retention"] += extra
    s["provenance"] = {"created": "now", "versions": {"layerprune": "x", "transformers": "y"}}
    fig = figures.retention_vs_ratio(s, "m")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["healing: none", "healing: sgr", "healing: original", "healing: kd"]
    assert _line_colours(fig) == {"bi": colour("bi"), "reverse": colour("reverse")}
    bars = figures.healing_gain(s, "m")
    assert {to_hex(p.get_facecolor()) for p in bars.axes[0].patches} == {colour(a) for a in ("sgr", "original", "kd")}
    md = report._markdown(report.build_blocks(s, {"name": "t"}, tmp_path))
    assert "classification · kd" in md and "generative · kd" in md
    # an unknown name gets a stable colour of its own
    assert colour("my-arm") == colour("my-arm") and colour("my-arm") not in {colour("bi"), colour("sgr")}


def test_html_answer_first_then_collapsible_evidence(tmp_path):
    s = _summary(CLEAR)
    s["speed"] = _speed(1.5)
    s["provenance"] = {"created": "now", "versions": {"layerprune": "x", "transformers": "y"}}
    blocks = report.build_blocks(s, {"name": "t"}, tmp_path)
    page = report._html(blocks, tmp_path, "t")
    first = page.index("<details")
    head = page[:first]
    assert 'class="lead"' in head and "Safe depth" in head and 'alt="Retention vs. share of layers removed' in head
    assert "<table" in head  # the safe-depth table itself
    # every section after the first screen is collapsible, and the contents link to each one
    ids = re.findall(r'<details id="([^"]+)">', page)
    assert ids == [i for i, _ in report.SECTIONS if i not in report.OPTIONAL]  # no data: no optional section
    assert re.findall(r'<a href="#([^"]+)">', page) == ids
    assert page.count("<summary>") == len(ids) and page.count("</details>") == len(ids)
    # self-contained: no external resources, every image inline with alt text
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page
    imgs = re.findall(r"<img [^>]*>", page)
    assert imgs and all('alt="' in i and 'src="data:image/png;base64,' in i for i in imgs)
    # markdown keeps the same order
    md = report._markdown(blocks)
    order = ["Safe depth"] + [t for i, t in report.SECTIONS if i not in report.OPTIONAL]
    assert [md.index(f"## {t}") for t in order] == sorted(md.index(f"## {t}") for t in order)
    assert md.index("retention_m.png") < md.index("## Safe depth")
