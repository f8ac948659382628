"""An evaluation as one self-contained HTML page (``semsearch eval --report``).

The page must open anywhere, offline, years later: one file, CSS inline, charts as inline
SVG drawn here, no script, no font or stylesheet fetched, and a Content-Security-Policy that
forbids the page any request at all. Every text that comes from data (query texts, names)
passes through :func:`html.escape`; nothing is built with a template engine.

What it shows: the mean measures of each mode (a bar chart and a table with latencies); for
each judged query, hybrid against the best single mode by nDCG@10, the queries it wins and
loses sorted by the size of the difference; and, given a second evaluation of another
collection or version on the same queries, before/after columns with the delta and the
queries the new one wins and loses, mode by mode.

Pure: it reads evaluation results through the small read-only protocols below (the
services' ``Evaluation`` and ``ModeReport`` satisfy them) and returns a string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Protocol

CHART_MEASURES = ("ndcg@10", "mrr@10", "recall@100")
TABLE_MEASURES = ("ndcg@10", "mrr@10", "recall@100", "map@100")
DIFF_MEASURE = "ndcg@10"
SINGLE_MODES = ("keyword", "dense")
# Per-query scores closer than this are a tie (sums of 1/log2 terms differ in the last bits).
TIE = 1e-9

LABELS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@100": "Recall@100",
          "map@100": "MAP@100"}
COLORS = {"keyword": "#4e79a7", "dense": "#f28e2b", "hybrid": "#59a14f"}
OTHER_COLORS = ("#b07aa1", "#76b7b2", "#edc948", "#9c755f")


class ModeScores(Protocol):
    """One mode's results: mean measures, latency percentiles, per-query scores."""

    @property
    def mode(self) -> str: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...
    @property
    def latency_ms(self) -> Mapping[str, float]: ...
    @property
    def per_query(self) -> Mapping[str, Mapping[str, float]]: ...


class EvalRun(Protocol):
    """One collection evaluated on one dataset split."""

    @property
    def collection(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def dataset(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def fusion(self) -> str: ...
    @property
    def modes(self) -> Sequence[ModeScores]: ...
    @property
    def queries(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class QueryDelta:
    qid: str
    text: str
    base: float  # the score of what is compared against (best single mode, or before)
    other: float  # the score of the challenger (hybrid, or after)

    @property
    def delta(self) -> float:
        return self.other - self.base


@dataclass(frozen=True)
class QueryDiff:
    """Per-query comparison of two score sets on one measure: the challenger's wins (largest
    gain first), its losses (largest loss first) and the number of ties."""

    base: str
    other: str
    measure: str
    wins: tuple[QueryDelta, ...]
    losses: tuple[QueryDelta, ...]
    ties: int

    @property
    def deltas(self) -> list[float]:
        """Every compared query's delta, largest first (ties as zeros), for the strip chart."""
        return ([d.delta for d in self.wins] + [0.0] * self.ties
                + [d.delta for d in reversed(self.losses)])


def diff_queries(base: Mapping[str, Mapping[str, float]],
                 other: Mapping[str, Mapping[str, float]], texts: Mapping[str, str], *,
                 base_label: str, other_label: str, measure: str = DIFF_MEASURE) -> QueryDiff:
    """Compare ``other`` against ``base`` query by query, over the queries both scored."""
    rows = [QueryDelta(qid, texts.get(qid, ""), base[qid].get(measure, 0.0),
                       other[qid].get(measure, 0.0))
            for qid in sorted(base.keys() & other.keys())]
    wins = sorted((r for r in rows if r.delta > TIE), key=lambda r: (-r.delta, r.qid))
    losses = sorted((r for r in rows if r.delta < -TIE), key=lambda r: (r.delta, r.qid))
    return QueryDiff(base_label, other_label, measure, tuple(wins), tuple(losses),
                     len(rows) - len(wins) - len(losses))


def best_single(run: EvalRun, measure: str = DIFF_MEASURE) -> ModeScores | None:
    """The single mode (keyword or dense) with the best mean score, first one on a tie."""
    singles = [m for m in run.modes if m.mode in SINGLE_MODES]
    return max(singles, key=lambda m: m.metrics.get(measure, 0.0)) if singles else None


def hybrid_diff(run: EvalRun) -> QueryDiff | None:
    """Hybrid against the best single mode of the same run, or None without both."""
    hybrid = next((m for m in run.modes if m.mode == "hybrid"), None)
    best = best_single(run)
    if hybrid is None or best is None:
        return None
    return diff_queries(best.per_query, hybrid.per_query, run.queries,
                        base_label=best.mode, other_label="hybrid")


def _mode(run: EvalRun, mode: str) -> ModeScores | None:
    return next((m for m in run.modes if m.mode == mode), None)


# -- formatting ------------------------------------------------------------------------
def _num(v: float) -> str:
    return f"{v:.4f}"


def _signed(v: float) -> str:
    return "0.0000" if abs(v) <= TIE else f"{v:+.4f}"


def _cls(v: float) -> str:
    return "pos" if v > TIE else "neg" if v < -TIE else "tie"


def _color(mode: str, index: int) -> str:
    return COLORS.get(mode, OTHER_COLORS[index % len(OTHER_COLORS)])


def _label(run: EvalRun) -> str:
    name = run.collection if run.collection == run.version \
        else f"{run.collection} ({run.version})"
    return f"{name}, {run.model}"


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 24px auto; max-width: 1100px; padding: 0 16px; color: #1f2328; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 8px 0; }
dl.meta dt { color: #57606a; } dl.meta dd { margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 8px; text-align: right;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; } th[colspan] { text-align: center; }
table.compare { font-size: 13px; } table.compare th, table.compare td { padding: 3px 6px; }
p.note { color: #57606a; font-size: 12px; margin: 0; }
td.text, th.text { text-align: left; max-width: 560px; }
td.id, th.id { text-align: left; font-family: ui-monospace, monospace; white-space: nowrap; }
.pos { color: #1a7f37; } .neg { color: #cf222e; } .tie { color: #57606a; }
.counts { font-size: 15px; } .counts b { font-size: 17px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 4px; }
svg { display: block; margin: 8px 0; max-width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #1f2328; }
svg .axis { stroke: #8c959f; stroke-width: 1; } svg .grid { stroke: #eaeef2; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 40px; color: #57606a; font-size: 12px; }
"""


# -- charts ----------------------------------------------------------------------------
def metrics_chart(after: EvalRun, before: EvalRun | None = None) -> str:
    """Grouped bars: one group per measure, one bar per mode (and per run, the earlier one
    paler, when comparing), on a 0..1 axis, each bar titled with its value."""
    modes = [m.mode for m in after.modes]
    series: list[tuple[str, str, ModeScores | None, float]] = []  # (mode, which, scores, a)
    for mode in modes:
        if before is not None:
            series.append((mode, "before", _mode(before, mode), 0.45))
        series.append((mode, "after", _mode(after, mode), 1.0))
    bar, gap, group_gap = (18, 2, 28) if before is not None else (36, 6, 32)
    group_w = len(series) * (bar + gap) - gap
    left, top, plot_h, bottom = 44, 16, 220, 40
    width = left + len(CHART_MEASURES) * (group_w + group_gap) + 8
    height = top + plot_h + bottom
    out = [f'<svg class="chart metrics" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="mean measures by mode">']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - tick)
        out.append(f'<line class="grid" x1="{left}" x2="{width - 4}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/><text x="{left - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{tick:.2f}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" '
               f'y2="{top + plot_h}"/>')
    for g, measure in enumerate(CHART_MEASURES):
        x0 = left + group_gap / 2 + g * (group_w + group_gap)
        for i, (mode, which, scores, alpha) in enumerate(series):
            if scores is None:
                continue
            value = max(0.0, min(1.0, scores.metrics.get(measure, 0.0)))
            h = plot_h * value
            x = x0 + i * (bar + gap)
            label = f"{mode} {LABELS[measure]}" + (f" ({which})" if before else "")
            out.append(
                f'<rect class="bar" data-mode="{escape(mode)}" data-measure="{measure}" '
                f'data-series="{which}" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar}" height="{h:.1f}" fill="{_color(mode, modes.index(mode))}" '
                f'fill-opacity="{alpha}"><title>{escape(label)}: {_num(value)}</title>'
                f'</rect>')
            if before is None:
                out.append(f'<text x="{x + bar / 2:.1f}" y="{top + plot_h - h - 3:.1f}" '
                           f'text-anchor="middle">{value:.3f}</text>')
        out.append(f'<text x="{x0 + group_w / 2:.1f}" y="{top + plot_h + 16}" '
                   f'text-anchor="middle">{LABELS[measure]}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{width - 4}" y1="{top + plot_h}" '
               f'y2="{top + plot_h}"/>')
    lx = left
    for i, mode in enumerate(modes):
        out.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" '
                   f'fill="{_color(mode, i)}"/><text x="{lx + 14}" y="{height - 5}">'
                   f'{escape(mode)}</text>')
        lx += 24 + 7 * len(mode)
    if before is not None:
        out.append(f'<text x="{lx + 8}" y="{height - 5}">pale: before, solid: after'
                   f'</text>')
    out.append("</svg>")
    return "".join(out)


def delta_strip(diff: QueryDiff) -> str:
    """One thin bar per query, sorted by delta: above the line where the challenger won,
    below where it lost; how many and how far at a glance."""
    deltas = diff.deltas
    n = max(len(deltas), 1)
    step = max(2.0, min(24.0, 900 / n))
    left, half = 8, 60
    width = int(left * 2 + step * n)
    height = half * 2 + 8
    mid = half + 4
    out = [f'<svg class="chart deltas" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="per-query '
           f'{escape(diff.other)} minus {escape(diff.base)}">']
    for i, d in enumerate(deltas):
        if abs(d) <= TIE:
            continue
        h = max(1.0, half * min(1.0, abs(d)))
        y = mid - h if d > 0 else mid
        out.append(f'<rect class="delta {_cls(d)}" x="{left + i * step:.1f}" y="{y:.1f}" '
                   f'width="{max(1.0, step - 1):.1f}" height="{h:.1f}" '
                   f'fill="{"#1a7f37" if d > 0 else "#cf222e"}"/>')
    out.append(f'<line class="axis" x1="{left}" x2="{width - left}" y1="{mid}" y2="{mid}"/>')
    out.append("</svg>")
    return "".join(out)


# -- tables ----------------------------------------------------------------------------
def _metrics_table(after: EvalRun, before: EvalRun | None) -> str:
    lat = ("p50", "p99")
    if before is None:
        head = ("<tr><th class='text'>mode</th>"
                + "".join(f"<th>{LABELS[m]}</th>" for m in TABLE_MEASURES)
                + "".join(f"<th>latency {p} (ms)</th>" for p in lat) + "</tr>")
        rows = []
        for r in after.modes:
            cells = "".join(f"<td data-measure='{m}'>{_num(r.metrics.get(m, 0.0))}</td>"
                            for m in TABLE_MEASURES)
            cells += "".join(f"<td>{r.latency_ms.get(p, 0.0):.2f}</td>" for p in lat)
            rows.append(f"<tr data-mode='{escape(r.mode)}'><td class='text'>"
                        f"{escape(r.mode)}</td>{cells}</tr>")
        return (f"<table class='metrics'><thead>{head}</thead><tbody>{''.join(rows)}"
                "</tbody></table>")
    head1 = ("<tr><th class='text' rowspan='2'>mode</th>"
             + "".join(f"<th colspan='3'>{LABELS[m]}</th>" for m in TABLE_MEASURES)
             + "".join(f"<th colspan='2'>latency {p} (ms)</th>" for p in lat) + "</tr>")
    head2 = "<tr>" + "<th>before</th><th>after</th><th>&Delta;</th>" * len(TABLE_MEASURES) \
        + "<th>before</th><th>after</th>" * len(lat) + "</tr>"
    lines: list[str] = []
    for r in after.modes:
        b = _mode(before, r.mode)
        cols: list[str] = []
        for m in TABLE_MEASURES:
            a_v = r.metrics.get(m, 0.0)
            if b is None:
                cols.append(f"<td>&ndash;</td><td>{_num(a_v)}</td><td>&ndash;</td>")
                continue
            b_v = b.metrics.get(m, 0.0)
            cols.append(f"<td>{_num(b_v)}</td><td>{_num(a_v)}</td>"
                         f"<td class='{_cls(a_v - b_v)}'>{_signed(a_v - b_v)}</td>")
        for p in lat:
            b_lat = f"{b.latency_ms.get(p, 0.0):.2f}" if b is not None else "&ndash;"
            cols.append(f"<td>{b_lat}</td><td>{r.latency_ms.get(p, 0.0):.2f}</td>")
        lines.append(f"<tr data-mode='{escape(r.mode)}'><td class='text'>{escape(r.mode)}"
                     f"</td>{''.join(cols)}</tr>")
    return (f"<table class='metrics compare'><thead>{head1}{head2}</thead>"
            f"<tbody>{''.join(lines)}</tbody></table>")


def _query_table(rows: Sequence[QueryDelta], kind: str, diff: QueryDiff) -> str:
    if not rows:
        return f"<p class='none'>No query where {escape(diff.other)} " \
               f"{'wins' if kind == 'wins' else 'loses'}.</p>"
    label = LABELS.get(diff.measure, diff.measure)
    head = (f"<tr><th>#</th><th class='id'>query</th><th class='text'>text</th>"
            f"<th>{escape(diff.base)} {label}</th><th>{escape(diff.other)} {label}</th>"
            f"<th>&Delta;</th></tr>")
    body = "".join(
        f"<tr data-qid='{escape(r.qid)}'><td>{i}</td><td class='id'>{escape(r.qid)}</td>"
        f"<td class='text'>{escape(r.text)}</td><td>{_num(r.base)}</td>"
        f"<td>{_num(r.other)}</td><td class='{_cls(r.delta)}'>{_signed(r.delta)}</td></tr>"
        for i, r in enumerate(rows, 1))
    return (f"<div class='scroll'><table class='queries {kind}'><thead>{head}</thead>"
            f"<tbody>{body}</tbody></table></div>")


def _counts(diff: QueryDiff) -> str:
    return (f"<p class='counts'>{escape(diff.other)} against {escape(diff.base)} "
            f"({LABELS.get(diff.measure, diff.measure)} per query): "
            f"<b class='pos' data-count='wins'>{len(diff.wins)}</b> won, "
            f"<b class='tie' data-count='ties'>{diff.ties}</b> tied, "
            f"<b class='neg' data-count='losses'>{len(diff.losses)}</b> lost.</p>")


def _diff_section(diff: QueryDiff, *, open_: bool = True) -> str:
    return (_counts(diff) + delta_strip(diff)
            + f"<p class='note'>One bar per query, sorted: above the line where "
              f"{escape(diff.other)} scored higher, below where it scored lower (full height "
              f"is a difference of 1).</p>"
            + f"<details class='wins'{' open' if open_ else ''}><summary>"
              f"{len(diff.wins)} queries {escape(diff.other)} wins, largest gain first"
              f"</summary>{_query_table(diff.wins, 'wins', diff)}</details>"
            + f"<details class='losses'{' open' if open_ else ''}><summary>"
              f"{len(diff.losses)} queries {escape(diff.other)} loses, largest loss first"
              f"</summary>{_query_table(diff.losses, 'losses', diff)}</details>")


# -- the page ----------------------------------------------------------------------------
def render_report(after: EvalRun, before: EvalRun | None = None, *,
                  generated: str = "", version: str = "") -> str:
    """The whole page. ``after`` is the evaluation the report is about; ``before`` (another
    collection or version, same dataset and modes) adds before/after columns and per-query
    wins and losses of after against before. ``generated`` and ``version`` go in the footer
    (left to the caller, so the same results always render the same page)."""
    judged = max((len(m.per_query) for m in after.modes), default=0)
    title = f"Evaluation of {after.collection} on {after.dataset.rstrip('/').rsplit('/', 1)[-1]}"
    meta = [("collection", _label(after))]
    if before is not None:
        meta = [("after", _label(after)), ("before", _label(before))]
    meta += [("dataset", after.dataset), ("split", after.split),
             ("judged queries", str(judged)), ("fusion", after.fusion),
             ("modes", ", ".join(m.mode for m in after.modes))]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{escape(title)}</h1><dl class='meta'>",
        "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in meta),
        "</dl></header>",
        "<section id='metrics'><h2>Quality by mode</h2>",
        metrics_chart(after, before),
        f"<div class='scroll'>{_metrics_table(after, before)}</div>",
        "<p>Means over the judged queries; latency is one query at a time through the "
        "search service, embedding included.</p></section>",
    ]
    diff = hybrid_diff(after)
    parts.append("<section id='hybrid-vs-best'><h2>Hybrid against the best single mode"
                 "</h2>")
    if diff is None:
        parts.append("<p>Needs hybrid and at least one of keyword and dense in "
                     "<code>--modes</code>.</p>")
    else:
        parts.append(f"<p>The best single mode here is <b>{escape(diff.base)}</b> (higher "
                     f"mean {LABELS[DIFF_MEASURE]}).</p>" + _diff_section(diff))
    parts.append("</section>")
    if before is not None:
        parts.append(_before_after(after, before))
    foot = "semsearch" + (f" {escape(version)}" if version else "")
    if generated:
        foot += f", generated {escape(generated)}"
    parts.append(f"<footer>{foot}. This page is self-contained: it loads nothing.</footer>"
                 "</body></html>")
    return "".join(parts) + "\n"


def _before_after(after: EvalRun, before: EvalRun) -> str:
    diffs = [(m.mode, diff_queries(b.per_query, m.per_query, after.queries,
                                   base_label="before", other_label="after"))
             for m in after.modes if (b := _mode(before, m.mode)) is not None]
    out = [f"<section id='before-after'><h2>After against before, query by query</h2>"
           f"<p>After: {escape(_label(after))}. Before: {escape(_label(before))}.</p>"
           "<table class='summary'><thead><tr><th class='text'>mode</th><th>won</th>"
           "<th>tied</th><th>lost</th><th>mean &Delta; nDCG@10</th></tr></thead><tbody>"]
    for mode, d in diffs:
        n = len(d.wins) + len(d.losses) + d.ties
        mean = sum(d.deltas) / n if n else 0.0
        out.append(f"<tr data-mode='{escape(mode)}'><td class='text'>{escape(mode)}</td>"
                   f"<td class='pos'>{len(d.wins)}</td><td class='tie'>{d.ties}</td>"
                   f"<td class='neg'>{len(d.losses)}</td>"
                   f"<td class='{_cls(mean)}'>{_signed(mean)}</td></tr>")
    out.append("</tbody></table>")
    for mode, d in diffs:
        out.append(f"<h3 data-mode='{escape(mode)}'>{escape(mode)}</h3>"
                   + _diff_section(d, open_=mode == "hybrid"))
    out.append("</section>")
    return "".join(out)
