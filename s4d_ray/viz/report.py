"""The run report: OUTPUT/report.html, one self-contained page (no network: plots are PNGs
embedded as data URIs), rebuilt from what a run leaves behind — `summary.json` (the latest
run), the Parquet shards (every clip done so far, with its QA columns, stage timings and
metadata) and `failures/` (every clip whose latest attempt failed).

Sections: clips done / failed by stage; seconds per stage (stacked bars per clip and the
latest run's mean); tracks per clip; the fraction of tracks each filter removed (no valid
depth, sky, boundary, drift) and kept; valid-depth fraction per clip; the depth distribution
of the stored track points; and, when synthetic ground truth is given, accuracy per depth band
beside the stereo limit. Every plotted number is also in the page as JSON
(`<script id="s4d-report-data" type="application/json">`) and in tables.

`write_report(OUTPUT)` is called at the end of every `s4d run`; `s4d report OUTPUT` rebuilds it
(`--ground-truth DATA` adds accuracy for synthetic clips with DATA/gt/, computed by
`s4d_ray.synthetic.evaluate` and handed in: this module knows nothing of ground truth).

OUTPUT must be an existing folder (the report is written inside it). Every value read is
checked before it is plotted: a `summary.json`, shard or failures table that cannot be read
or holds a value of the wrong type is an InputError naming the file (and the clip and column).
Names from the data are shown as text: `$` never starts matplotlib mathtext, and the JSON
block escapes `<`, `>` and `&` so no message can close or comment out its <script>.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import numbers
import os
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s4d_ray.errors import InputError
from s4d_ray.io import fs
from s4d_ray.io.qa import DEPTH_HISTOGRAM_EDGES_M, QA_COLUMNS, clip_qa
from s4d_ray.io.writer import FAILURES_DIR, PARQUET_DIR, read_failures, table_to_clips

log = logging.getLogger("s4d_ray.viz.report")

REPORT_NAME = "report.html"
DATA_ELEMENT_ID = "s4d-report-data"
MAX_BARS = 60  # per-clip bar charts above this many clips become histograms
FILTER_REASONS = ("no_depth", "sky", "boundary", "drift")
STAGE_COLOURS = {
    "decode": "#8c8c8c",
    "stereo": "#1f77b4",
    "tracking": "#ff7f0e",
    "segmentation": "#2ca02c",
    "lift": "#9467bd",
    "optimize": "#d62728",
    "write": "#17becf",
}
MAX_SUMMARY_BYTES = 64 << 20
"""Cap on OUTPUT/summary.json (a run writes a few kB)."""
REQUIRED_INT_COLUMNS = ("num_tracks",)
OPTIONAL_INT_COLUMNS = ("num_frames", "tracks_empty", "tracks_tracked")
UNREADABLE = (pa.ArrowException, OSError, ValueError, KeyError, TypeError, IndexError)
"""What reading a malformed Parquet file raises (pyarrow, the record decoder)."""


def _json_or_empty(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(str(text)) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _shard_rows(uri: str) -> list[dict[str, Any]]:
    """The raw rows of one shard (see `read_clip_rows`); pyarrow's errors pass through."""
    fs.input_size(uri)  # a regular file: a FIFO named *.parquet would block the open
    filesystem, path = fs.filesystem(uri)
    with filesystem.open(path, "rb") as f:
        names = pq.read_schema(f).names
    wanted = ["name", "stage_timings", "metadata", *QA_COLUMNS]
    with filesystem.open(path, "rb") as f:
        if all(c in names for c in wanted):
            return pq.read_table(f, columns=wanted).to_pylist()
        # an older shard: recompute the QA figures from the records
        return [
            {
                "name": record.name,
                "stage_timings": str(record.extras.get("stage_timings", "{}")),
                "metadata": str(record.extras.get("metadata", "{}")),
                **clip_qa(record),
            }
            for record in table_to_clips(pq.read_table(f))
        ]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _clean_row(row: dict[str, Any], uri: str) -> dict[str, Any]:
    """A shard row with every value the report uses checked and typed: ints, floats (None
    -> NaN), JSON dicts of numbers, the histogram; an InputError naming file, clip, column."""
    name = row.get("name")

    def bad(column: str, expected: str, value: Any) -> InputError:
        clip = f"clip {name!r}, " if isinstance(name, str) else ""
        return InputError(
            f"{uri}: {clip}column {column!r}: expected {expected}, got {repr(value)[:80]}"
        )

    if not isinstance(name, str):
        raise bad("name", "a string", name)
    clean: dict[str, Any] = {"name": name}
    for column in QA_COLUMNS:
        value = row.get(column)
        if column == "depth_histogram":
            bins = len(DEPTH_HISTOGRAM_EDGES_M) - 1
            counts = [] if value is None else list(value)
            if counts and (
                len(counts) != bins or not all(_is_number(c) and c >= 0 for c in counts)
            ):
                raise bad(column, f"{bins} counts >= 0", value)
            clean[column] = [int(c) for c in counts]
        elif column in REQUIRED_INT_COLUMNS or column in OPTIONAL_INT_COLUMNS:
            if value is None and column in OPTIONAL_INT_COLUMNS:
                clean[column] = None
            elif not isinstance(value, numbers.Integral) or isinstance(value, bool | np.bool_):
                raise bad(column, "an integer", value)
            else:
                clean[column] = int(value)
        elif value is None or _is_number(value):
            clean[column] = math.nan if value is None else float(value)
        else:
            raise bad(column, "a number", value)
    for column in ("stage_timings", "metadata"):
        clean[column] = _json_or_empty(row.get(column))
    for stage, seconds in clean["stage_timings"].items():
        if not _is_number(seconds):
            raise bad("stage_timings", f"seconds (a number) for stage {stage!r}", seconds)
    for key, value in clean["metadata"].items():
        if key.startswith("tracks_") and not (_is_number(value) and math.isfinite(value)):
            raise bad("metadata", f"a finite number for {key!r}", value)
    return clean


def read_clip_rows(output: str) -> list[dict[str, Any]]:
    """One dict per clip in OUTPUT's shards: name, the QA columns, `stage_timings` and
    `metadata` (dicts). Shards written before the QA columns existed are read whole.
    A shard that cannot be read, or holds a value of the wrong type, is an InputError
    naming it."""
    rows = []
    for uri in fs.list_files(fs.join(output, PARQUET_DIR), ".parquet"):
        try:
            shard = _shard_rows(uri)
        except (InputError, *UNREADABLE) as error:
            raise InputError(f"{uri}: not a readable Parquet shard: {error}") from None
        rows += [_clean_row(row, uri) for row in shard]
    return sorted(rows, key=lambda r: r["name"])


def read_summary(output: str) -> dict[str, Any]:
    """OUTPUT/summary.json ({} when absent) without its `config`; an InputError naming the
    file when it is not a JSON object or its per-stage seconds are not numbers."""
    uri = fs.join(output, "summary.json")
    if not fs.exists(uri):
        return {}
    try:
        summary = json.loads(fs.read_bytes(uri, max_bytes=MAX_SUMMARY_BYTES))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{uri}: not valid JSON: {error}") from None
    if not isinstance(summary, dict):
        raise InputError(f"{uri}: expected a JSON object, got {type(summary).__name__}")
    summary.pop("config", None)
    seconds = summary.get("stage_seconds_per_clip", {})
    if not isinstance(seconds, dict) or not all(_is_number(v) for v in seconds.values()):
        raise InputError(
            f"{uri}: 'stage_seconds_per_clip' must map stages to seconds, got {repr(seconds)[:80]}"
        )
    return summary


def read_all_failures(output: str) -> list[dict[str, str]]:
    """The failure rows of OUTPUT/failures/ as dicts of strings; an InputError naming the
    table that cannot be read or holds a value that is not a string."""
    failures = []
    for uri in fs.list_files(fs.join(output, FAILURES_DIR), ".parquet"):
        try:
            fs.input_size(uri)
            rows = [f.__dict__ for f in read_failures(uri)]
        except (InputError, *UNREADABLE) as error:
            raise InputError(f"{uri}: not a readable failures table: {error}") from None
        for row in rows:
            bad = [k for k, v in row.items() if not isinstance(v, str)]
            if bad:
                raise InputError(
                    f"{uri}: failure of clip {repr(row.get('clip_id'))[:80]}: column "
                    f"{bad[0]!r} is not a string: {repr(row[bad[0]])[:80]}"
                )
        failures += rows
    return failures


def filter_fractions(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Tracks removed by each filter and kept, pooled over clips, as fractions of tracked.

    From each clip's metadata (`tracks_tracked`, `tracks_dropped_<reason>`, `tracks_kept`)
    and its stored track count. Semantic reasons may overlap (a track on sky and drifting
    counts in both). Clips without the metadata are left out (`clips` says how many count)."""
    tracked = 0
    dropped: Counter[str] = Counter()
    kept_lift = stored = with_points = clips = 0
    for row in rows:
        meta = row["metadata"]
        if "tracks_tracked" not in meta:
            continue
        clips += 1
        tracked += int(meta["tracks_tracked"])
        for reason in FILTER_REASONS:
            dropped[reason] += int(meta.get(f"tracks_dropped_{reason}", 0))
        kept_lift += int(meta.get("tracks_kept", row["num_tracks"]))
        stored += int(row["num_tracks"])
        with_points += int(row["num_tracks"]) - int(row.get("tracks_empty") or 0)
    frac = {reason: dropped[reason] / tracked if tracked else math.nan for reason in FILTER_REASONS}
    return {
        "clips": clips,
        "tracks_tracked": tracked,
        "dropped": dict(dropped),
        "dropped_fraction": frac,
        "kept_after_filters_fraction": kept_lift / tracked if tracked else math.nan,
        "stored_fraction": stored / tracked if tracked else math.nan,
        "with_points_fraction": with_points / tracked if tracked else math.nan,
    }


def collect_report_data(output: str, accuracy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data; `accuracy` is the ground-truth
    section when the caller has one (`s4d_ray.synthetic.evaluate.run_accuracy`)."""
    summary = read_summary(output)
    rows = read_clip_rows(output)
    failures = read_all_failures(output)
    stages = list(STAGE_COLOURS)
    for row in rows:
        stages += [s for s in row["stage_timings"] if s not in stages]
    return {
        "output": output,
        "summary": summary,
        "clips_done_total": len(rows),
        "clips_failed_total": len(failures),
        "failures_by_stage": dict(Counter(f["stage"] for f in failures)),
        "failures": failures,
        "stages": [s for s in stages if any(s in r["stage_timings"] for r in rows)],
        "clips": rows,
        "filters": filter_fractions(rows),
        "depth_histogram_edges_m": list(DEPTH_HISTOGRAM_EDGES_M),
        "depth_histogram": [
            int(sum(r["depth_histogram"][i] for r in rows if r["depth_histogram"]))
            for i in range(len(DEPTH_HISTOGRAM_EDGES_M) - 1)
        ],
        "accuracy": accuracy or {},
    }


# --- figures -----------------------------------------------------------------------------


def _label(text: Any) -> str:
    """`text` for a matplotlib label, shown as written: `$` escaped, so a name from the data
    never starts mathtext (which raises on what it cannot parse)."""
    return str(text).replace("$", r"\$")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(width: float = 7.0, height: float = 3.2, columns: int = 1):
    """A standalone matplotlib Figure (no pyplot state, no GUI backend) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, columns)


def _per_clip_bars(ax, names: list[str], values: list[float], label: str, fmt: str) -> None:
    """Bars per clip, or a histogram when there are more than MAX_BARS clips."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        ax.text(0.5, 0.5, f"no {label} in these clips' data", ha="center", transform=ax.transAxes)
    if len(names) <= MAX_BARS:
        x = np.arange(len(names))
        ax.bar(x, [v if v is not None and np.isfinite(v) else 0 for v in values], color="#1f77b4")
        ax.set_xticks(x, [_label(n) for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(label)
        for xi, v in zip(x, values, strict=True):
            if v is not None and np.isfinite(v):
                ax.annotate(format(v, fmt), (xi, v), ha="center", va="bottom", fontsize=7)
    else:
        ax.hist(finite, bins=30, color="#1f77b4")
        ax.set_xlabel(label)
        ax.set_ylabel("clips")


def figure_clips(data: dict[str, Any]) -> str:
    fig, ax = _figure(6, 2.8)
    by_stage = data["failures_by_stage"]
    labels = ["done", *[_label(f"failed: {s}") for s in by_stage]]
    values = [data["clips_done_total"], *by_stage.values()]
    colours = ["#2ca02c"] + ["#d62728"] * len(by_stage)
    y = np.arange(len(labels))
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    for yi, v in zip(y, values, strict=True):
        ax.annotate(str(v), (v, yi), va="center", ha="left", fontsize=8, xytext=(3, 0),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("clips (all runs into this output)")
    return _png(fig)


def figure_stage_seconds(data: dict[str, Any]) -> str:
    rows, stages = data["clips"], data["stages"]
    summary_means = data["summary"].get("stage_seconds_per_clip", {})
    bars: list[tuple[str, dict[str, float]]] = []
    if len(rows) <= MAX_BARS:
        bars += [(r["name"], r["stage_timings"]) for r in rows]
    elif rows:
        bars.append(
            (
                f"mean of {len(rows)} clips",
                {s: float(np.mean([r["stage_timings"].get(s, 0) for r in rows])) for s in stages},
            )
        )
    if summary_means:
        bars.append(("latest run: mean per clip", summary_means))
    all_stages = stages + [s for s in summary_means if s not in stages]
    fig, ax = _figure(max(6.0, 0.28 * len(bars) + 3), 3.4)
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for stage in all_stages:
        heights = np.array([float(b[1].get(stage, 0.0)) for b in bars])
        ax.bar(x, heights, bottom=bottom, label=_label(stage), color=STAGE_COLOURS.get(stage))
        bottom += heights
    ax.set_xticks(x, [_label(b[0]) for b in bars], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, 1.25))
    return _png(fig)


def figure_tracks(data: dict[str, Any]) -> str:
    rows = data["clips"]
    fig, ax = _figure()
    _per_clip_bars(ax, [r["name"] for r in rows], [r["num_tracks"] for r in rows], "tracks", "d")
    return _png(fig)


def figure_filters(data: dict[str, Any]) -> str:
    f = data["filters"]
    labels = [f"dropped: {r.replace('_', ' ')}" for r in FILTER_REASONS] + [
        "kept after filters",
        "stored (after optimiser)",
        "stored with >= 1 point",
    ]
    values = [f["dropped_fraction"][r] for r in FILTER_REASONS] + [
        f["kept_after_filters_fraction"],
        f["stored_fraction"],
        f["with_points_fraction"],
    ]
    fig, ax = _figure(6, 2.8)
    y = np.arange(len(labels))
    colours = ["#d62728"] * len(FILTER_REASONS) + ["#2ca02c", "#1f77b4", "#17becf"]
    ax.barh(y, [v if np.isfinite(v) else 0 for v in values], color=colours)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    for yi, v in zip(y, values, strict=True):
        text = f"{v:.1%}" if np.isfinite(v) else "n/a"
        ax.annotate(text, (v if np.isfinite(v) else 0, yi), va="center", fontsize=8,
                    xytext=(3, 0), textcoords="offset points")  # fmt: skip
    ax.set_xlabel(f"fraction of {f['tracks_tracked']} tracked 2D tracks ({f['clips']} clips)")
    return _png(fig)


def figure_valid_depth(data: dict[str, Any]) -> str:
    rows = data["clips"]
    fig, ax = _figure()
    _per_clip_bars(
        ax,
        [r["name"] for r in rows],
        [r["valid_depth_fraction"] for r in rows],
        "valid-depth fraction",
        ".2f",
    )
    if len(rows) <= MAX_BARS:
        ax.set_ylim(0, 1.1)
    return _png(fig)


def figure_depth_distribution(data: dict[str, Any]) -> str:
    edges = np.asarray(data["depth_histogram_edges_m"])
    counts = np.asarray(data["depth_histogram"], dtype=np.float64)
    fig, ax = _figure()
    ax.stairs(counts, edges, fill=True, color="#1f77b4", alpha=0.8)
    ax.set_xscale("log")
    ticks = [0.25, 0.5, 1, 2, 5, 10, 20, 32]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    for boundary in (2, 5, 10, 20):
        ax.axvline(boundary, color="k", lw=0.8, ls=":")
    ax.set_xlabel("camera depth of stored track points (m; bands at 2, 5, 10, 20 m)")
    ax.set_ylabel("points")
    return _png(fig)


def figure_accuracy(data: dict[str, Any]) -> str:
    acc = data["accuracy"]
    bands = [b for b in acc["bands"] if b["points"]]
    fig, (ax1, ax2) = _figure(10, 3.4, columns=2)
    fig.subplots_adjust(wspace=0.3)
    x = np.arange(len(bands))
    names = [b["band"] for b in bands]
    ax1.plot(x, [b["median_error_cm"] for b in bands], "o-", color="k", label="pipeline: 3D error")
    ax2.plot(
        x,
        [100 * b["median_relative_depth_error"] for b in bands],
        "o-",
        color="k",
        label="pipeline: depth error",
    )
    for d, style in zip(acc["disparity_errors_px"], ("--", ":"), strict=False):
        ax1.plot(
            x, [b[f"stereo_cm_{d:g}"] for b in bands], style, label=f"stereo limit δd={d:g} px"
        )
        ax2.plot(
            x,
            [100 * b[f"stereo_relative_{d:g}"] for b in bands],
            style,
            label=f"stereo limit δd={d:g} px",
        )
    from matplotlib.ticker import FormatStrFormatter

    for ax, label in ((ax1, "median 3D error (cm)"), (ax2, "median relative depth error (%)")):
        ax.set_xticks(x, names)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel(label)
        ax.set_xlabel("true depth band")
        ax.legend(fontsize=7)
    return _png(fig)


# --- page --------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if not np.isfinite(v) else f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _safe_json(value: Any) -> str:
    """JSON for a <script> block: NaN as null; `<`, `>`, `&` (and U+2028/9) as \\u escapes,
    so no string in it can end the block (`</script>`) or open a comment (`<!--`)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    text = json.dumps(clean(value), sort_keys=True)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.kpi{display:inline-block;margin:4px 18px 4px 0} .kpi b{font-size:20px;display:block}
.note{color:#666;font-size:12px} img{max-width:100%}
details{margin:6px 0} pre{white-space:pre-wrap;font-size:11px;background:#f7f7f7;padding:6px}
"""


def render_report(data: dict[str, Any]) -> str:
    """The report page (HTML text) of `collect_report_data`'s output."""
    s = data["summary"]
    rows = data["clips"]
    kpis = [
        ("clips done (all runs)", data["clips_done_total"]),
        ("clips failed", data["clips_failed_total"]),
        ("latest run: done / failed / skipped",
         f"{s.get('clips_done', '-')} / {s.get('clips_failed', '-')} / {s.get('clips_skipped', '-')}"),
        ("latest run: wall s", s.get("wall_seconds", "-")),
        ("clips / hour", s.get("clips_per_hour", "-")),
        ("backend", s.get("backend", "-")),
    ]  # fmt: skip
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>s4d-ray run report: {html.escape(data['output'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>s4d-ray run report</h1><p class='note'>{html.escape(data['output'])}</p>",
        "".join(f"<div class='kpi'><b>{html.escape(str(v))}</b>{html.escape(k)}</div>" for k, v in kpis),
        "<h2>Clips done and failed by stage</h2>",
        f"<img alt='clips by stage' src='{figure_clips(data)}'>",
    ]  # fmt: skip
    if data["failures"]:
        parts.append(
            "<details><summary>failures</summary>"
            + _table(
                ["clip", "stage", "error", "message"],
                [
                    [f["clip_id"], f["stage"], f["error_type"], f["message"][:300]]
                    for f in data["failures"]
                ],
            )
            + "</details>"
        )
    if rows or s.get("stage_seconds_per_clip"):
        parts += [
            "<h2>Seconds per stage</h2>",
            f"<img alt='seconds per stage' src='{figure_stage_seconds(data)}'>",
            _table(
                ["stage", "latest run: mean s per clip"],
                [[k, v] for k, v in s.get("stage_seconds_per_clip", {}).items()],
            ),
        ]
    if rows:
        f = data["filters"]
        parts += [
            "<h2>Tracks per clip</h2>",
            f"<img alt='tracks per clip' src='{figure_tracks(data)}'>",
            "<h2>Tracks kept by each filter</h2>",
            f"<img alt='filters' src='{figure_filters(data)}'>",
            "<p class='note'>no depth: no frame with valid stereo depth; sky, boundary, drift: "
            "the semantic drift filter (off with the cpu backend); reasons may overlap. "
            "Stored: tracks written to the npz; with &ge; 1 point: of those, tracks that keep "
            "at least one point after the optimiser's dilated visibility mask (the rest are "
            "stored with length 0).</p>",
            _table(
                ["filter", "tracks", "fraction of tracked"],
                [[r, f["dropped"].get(r, 0), f["dropped_fraction"][r]] for r in FILTER_REASONS],
            ),
            "<h2>Valid-depth fraction per clip</h2>",
            f"<img alt='valid depth' src='{figure_valid_depth(data)}'>",
            "<h2>Depth distribution</h2>",
            f"<img alt='depth distribution' src='{figure_depth_distribution(data)}'>",
            "<h2>Per clip</h2>",
            _table(
                [
                    "clip",
                    "frames",
                    "tracks",
                    "empty",
                    "tracked",
                    "kept frac",
                    "valid depth",
                    "median len",
                    "median z m",
                    "p10 z",
                    "p90 z",
                    "seconds",
                ],
                [
                    [
                        r["name"],
                        r["num_frames"],
                        r["num_tracks"],
                        r.get("tracks_empty"),
                        r["tracks_tracked"],
                        r["tracks_kept_fraction"],
                        r["valid_depth_fraction"],
                        r["median_track_length"],
                        r["median_depth_m"],
                        r["p10_depth_m"],
                        r["p90_depth_m"],
                        round(sum(r["stage_timings"].values()), 2),
                    ]
                    for r in rows
                ],
            ),
        ]
    acc = data["accuracy"]
    if acc:
        ds = acc["disparity_errors_px"]
        parts += [
            "<h2>Accuracy against ground truth, by depth band</h2>",
            f"<img alt='accuracy' src='{figure_accuracy(data)}'>",
            "<p class='note'>Beside each band, the depth error stereo alone implies at the "
            "band's median depth, δz = z²·δd/(f·b) with f·b = 443.4 px × 0.063 m, for a "
            "disparity error δd. The 3D error also holds 2D tracking error.</p>",
            _table(
                ["band", "points", "median z m", "3D err cm"]
                + [f"stereo δd={d:g}px cm" for d in ds]
                + ["rel depth err"]
                + [f"stereo δd={d:g}px rel" for d in ds],
                [
                    [b["band"], b["points"], b["median_depth_m"], b["median_error_cm"]]
                    + [b[f"stereo_cm_{d:g}"] for d in ds]
                    + [b["median_relative_depth_error"]]
                    + [b[f"stereo_relative_{d:g}"] for d in ds]
                    for b in acc["bands"]
                ],
            ),
            _table(
                ["clip", "points", "median 3D err cm", "median rel depth err"],
                [
                    [c["clip"], c["points"], c["median_error_cm"], c["median_relative_depth_error"]]
                    for c in acc["per_clip"]
                ],
            ),
        ]
    parts += [
        f"<script id='{DATA_ELEMENT_ID}' type='application/json'>{_safe_json(data)}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def read_report_data(html_text: str) -> dict[str, Any]:
    """The JSON data block of a rendered report (what its figures show)."""
    start = html_text.index(f"<script id='{DATA_ELEMENT_ID}' type='application/json'>")
    start = html_text.index(">", start) + 1
    end = html_text.index("</script>", start)
    return json.loads(html_text[start:end])


def write_report(output: str, accuracy: dict[str, Any] | None = None) -> str:
    """Build OUTPUT/report.html from the run's outputs (atomic write); return its URI.
    `accuracy`: the ground-truth section (`s4d_ray.synthetic.evaluate`), shown when given.
    OUTPUT must be an existing folder: a mistyped one is an InputError, not an empty report."""
    if fs.is_local(output):
        path = fs.filesystem(output)[1]
        if not os.path.isdir(path):
            what = "is not a folder" if os.path.exists(path) else "does not exist"
            raise InputError(f"output folder {output!r} {what}")
    else:
        filesystem, path = fs.filesystem(output)
        if not filesystem.isdir(path):
            raise InputError(f"output folder {output!r} does not exist (no object under it)")
    text = render_report(collect_report_data(output, accuracy))
    uri = fs.join(output, REPORT_NAME)
    fs.write_bytes(uri, text.encode())
    return uri
