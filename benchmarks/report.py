"""Summaries of the workers' outcomes: medians, ratios, the markdown tables, the goals.

Standard library only, like the driver. A summary row is one case of one
codec variant over every repetition; :func:`summarize` makes it, and the
JSON file (``--json``) is the list of rows.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Any

from catalog import MIB, CaseInfo

Outcome = dict[str, Any]  # a worker's JSON (measure.Outcome.to_dict)


def _median(values: list[Any]) -> float | None:
    found = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    return median(found) if found else None


def _max(values: list[Any]) -> float | None:
    found = [v for v in values if isinstance(v, int | float)]
    return max(found) if found else None


def _ran(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes that measured something (a FAIL ran, but wrote a wrong target)."""
    return [o for o in outcomes if o["status"] in ("OK", "FAIL")]


def overall_check(outcomes: list[Outcome]) -> str:
    """``OK`` when every repetition was OK, else the first other status and its count.

    >>> overall_check([{"status": "OK"}, {"status": "FAIL"}])
    'FAIL (1/2)'
    """
    statuses = [o["status"] for o in outcomes]
    bad = [s for s in statuses if s != "OK"]
    if not bad:
        return "OK" if statuses else "-"
    return bad[0] if len(bad) == len(statuses) else f"{bad[0]} ({len(bad)}/{len(statuses)})"


def _notes(outcomes: list[Outcome]) -> list[str]:
    return list(dict.fromkeys(note for o in outcomes for note in o.get("notes", [])))


def base_row(case: CaseInfo, codec: str, outcomes: list[Outcome], bound: float) -> dict[str, Any]:
    """The keys every row has (see benchmarks/README.md), over all repetitions.

    Peak RSS and its increase are the largest of the repetitions: a memory
    bound must hold every time. Wall and CPU utilisation are medians.
    """
    ran = _ran(outcomes)
    peak = _max([o["peak_rss_mib"] for o in ran])
    increase = _max([o["rss_increase_mib"] for o in ran])
    bounded = increase if case.process_based else peak
    return {
        "workload": case.kind,
        "codec": codec,
        "case": case.name,
        "wall_s": _median([o["wall_s"] for o in ran]),
        "ratio": None,
        "cpu_util": _median([o["cpu_util"] for o in ran]),
        "peak_rss_mib": peak,
        "rss_increase_mib": increase,
        "process_based": case.process_based,
        "within_bound": None if bounded is None else bounded <= bound / MIB,
        "check": overall_check(outcomes),
        "walls": [o["wall_s"] for o in ran],
        "setup_s": _median([o["setup_s"] for o in ran]),
        "notes": _notes(outcomes),
    }


def _extra(outcomes: list[Outcome], key: str) -> float | None:
    return _median([o.get("extra", {}).get(key) for o in _ran(outcomes)])


def _per_stage(outcomes: list[Outcome]) -> list[float | None]:
    """The median CPU utilisation of each stage over the repetitions.

    >>> _per_stage([{"extra": {"stage_cpu_utils": [1.5, 1.9]}}, {"extra": {}}])
    [1.5, 1.9]
    """
    lists = [o.get("extra", {}).get("stage_cpu_utils") or [] for o in outcomes]
    stages = max((len(values) for values in lists), default=0)
    return [_median([v[i] for v in lists if len(v) > i]) for i in range(stages)]


def latency_row(row: dict[str, Any], plain: list[Outcome], delayed: list[Outcome]) -> None:
    """Add the plain-store wall, the requests and the effective request concurrency."""
    walls_plain = [o["wall_s"] for o in _ran(plain)]
    row["wall_plain_s"] = _median(walls_plain)
    row["walls_plain"] = walls_plain
    row["requests"] = _extra(delayed, "requests")
    row["max_in_flight"] = _extra(delayed, "max_in_flight")
    delay = _extra(delayed, "delay_s")
    added = None if row["wall_plain_s"] is None else (row["wall_s"] or 0) - row["wall_plain_s"]
    ok = row["requests"] and delay and added and added > 0
    row["concurrency"] = row["requests"] * delay / added if ok else None  # type: ignore[operator]


def summarize(
    case: CaseInfo, codec: str, outcomes: list[tuple[str, Outcome]], bound: float
) -> dict[str, Any]:
    """One row for ``case`` on ``codec`` from ``(variant, outcome)`` pairs of every rep."""
    if case.kind == "latency":
        delayed = [o for v, o in outcomes if v == "delayed"]
        row = base_row(case, codec, delayed, bound)
        latency_row(row, [o for v, o in outcomes if v == "plain"], delayed)
        row["check"] = overall_check([o for _, o in outcomes])
        return row
    plain = [o for _, o in outcomes]
    row = base_row(case, codec, plain, bound)
    if case.kind == "s3":
        row["mb_per_s"] = _extra(plain, "mb_per_s")
    if case.kind == "w1":
        row["stages_cpu_util"] = _extra(plain, "stages_cpu_util")
        row["stage_cpu_utils"] = _per_stage(_ran(plain))
        row["stages_machine_busy"] = _extra(plain, "stages_machine_busy")
        row["stages_steal"] = _extra(plain, "stages_steal")
    if case.kind == "scale":
        for key in ("arrays", "graph_nodes", "copy_tasks", "stages", "run_arrays", "run_tasks"):
            row[key] = _extra(plain, key)
        for key in ("run_s", "tasks_per_s", "run_cpu_util", "run_rss_increase_mib"):
            row[key] = _extra(plain, key)
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio`` = median wall / median wall of ``copy`` on the same codec (W1 rows)."""
    copies = {r["codec"]: r["wall_s"] for r in rows if r["case"] == "copy"}
    for row in rows:
        reference = copies.get(row["codec"])
        if row["workload"] == "w1" and row["wall_s"] and reference:
            row["ratio"] = row["wall_s"] / reference


# Tables ----------------------------------------------------------------------


def _cell(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def w1_table(rows: list[dict[str, Any]]) -> str:
    header = ["case", "wall s", "ratio", "CPU util", "CPU in stages", "per stage"]
    header += ["machine busy in stages", "steal"]
    header += ["peak RSS MiB", "increase MiB", "RSS bound", "check", "setup s", "notes"]
    body = [
        [
            r["case"],
            _cell(r["wall_s"]),
            _cell(r["ratio"], suffix="x"),
            _cell(r["cpu_util"]),
            _cell(r.get("stages_cpu_util")),
            " / ".join(_cell(v) for v in r.get("stage_cpu_utils") or []) or "-",
            _cell(r.get("stages_machine_busy")),
            _cell(r.get("stages_steal")),
            _cell(r["peak_rss_mib"], 0),
            _cell(r["rss_increase_mib"], 0) if r["process_based"] else "-",
            _cell(r["within_bound"]),
            r["check"],
            _cell(r["setup_s"], 1),
            "; ".join(r["notes"]),
        ]
        for r in rows
    ]
    return markdown(header, body)


def latency_table(rows: list[dict[str, Any]]) -> str:
    header = ["codec", "case", "requests", "wall plain s", "wall +20 ms s", "concurrency"]
    header += ["max in flight"]
    header += ["CPU util", "peak RSS MiB", "RSS bound", "check"]
    body = [
        [
            r["codec"],
            r["case"],
            _cell(r["requests"], 0),
            _cell(r["wall_plain_s"]),
            _cell(r["wall_s"]),
            _cell(r["concurrency"], 1),
            _cell(r["max_in_flight"], 0),
            _cell(r["cpu_util"]),
            _cell(r["peak_rss_mib"], 0),
            _cell(r["within_bound"]),
            r["check"],
        ]
        for r in rows
    ]
    return markdown(header, body)


def s3_table(rows: list[dict[str, Any]]) -> str:
    header = ["codec", "case", "wall s", "MB/s", "CPU util", "peak RSS MiB", "RSS bound", "check"]
    body = [
        [
            r["codec"],
            r["case"],
            _cell(r["wall_s"]),
            _cell(r["mb_per_s"], 1),
            _cell(r["cpu_util"]),
            _cell(r["peak_rss_mib"], 0),
            _cell(r["within_bound"]),
            r["check"],
        ]
        for r in rows
    ]
    return markdown(header, body)


def scale_table(rows: list[dict[str, Any]]) -> str:
    header = ["arrays", "rechunk() s", "graph nodes", "copy tasks", "client peak RSS MiB"]
    header += ["run arrays", "run tasks", "run s", "tasks/s", "run CPU util", "check"]
    body = [
        [
            _cell(r["arrays"], 0),
            _cell(r["wall_s"]),
            _cell(r["graph_nodes"], 0),
            _cell(r["copy_tasks"], 0),
            _cell(r["peak_rss_mib"], 0),
            _cell(r["run_arrays"], 0),
            _cell(r["run_tasks"], 0),
            _cell(r["run_s"], 1),
            _cell(r["tasks_per_s"], 0),
            _cell(r["run_cpu_util"]),
            r["check"],
        ]
        for r in rows
    ]
    return markdown(header, body)


def tables(rows: list[dict[str, Any]]) -> str:
    """Every table: W1 per codec, then latency, S3 and scale (those that ran)."""
    parts = []
    for codec in dict.fromkeys(r["codec"] for r in rows if r["workload"] == "w1"):
        selected = [r for r in rows if r["workload"] == "w1" and r["codec"] == codec]
        parts.append(f"### W1, {codec}\n\n{w1_table(selected)}")
    for kind, title, table in (
        ("latency", "Latency: 20 ms per request", latency_table),
        ("s3", "S3 (moto server)", s3_table),
        ("scale", "Scale: metadata-only group, dask executor", scale_table),
    ):
        selected = [r for r in rows if r["workload"] == kind]
        if selected:
            parts.append(f"### {title}\n\n{table(selected)}")
    return "\n\n".join(parts)


# Goals -----------------------------------------------------------------------

#: Issue 9's wall-time goals on W1, as ratios to the plain copy.
RATIO_GOALS = {"threads": 1.2, "dask-threads": 1.3, "dask-distributed": 1.6}
RATIO_GOALS |= {"beam": 2.0, "prefect": 2.0}
OURS = ("threads", "python", "dask-threads", "dask-distributed", "beam", "prefect", "xarray")


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per goal of issue 9 that this run measured."""
    lines = []
    for r in rows:
        name, value = r["case"], r.get("ratio")
        where = f"[{r['codec']}] {name}"
        if r["workload"] == "w1" and name in RATIO_GOALS and value is not None:
            lines.append(
                f"{where}: {value:.2f}x copy (goal <= {RATIO_GOALS[name]}x: "
                f"{_verdict(value <= RATIO_GOALS[name])}), RSS bound {_verdict(r['within_bound'])}"
            )
        if r["workload"] == "w1" and name in OURS and r.get("stages_cpu_util") is not None:
            util = r["stages_cpu_util"]
            lines.append(
                f"{where}: CPU {util:.2f} during the stages, {r['cpu_util']:.2f} over the "
                f"timed part (goal >= 1.8 during the stages: {_verdict(util >= 1.8)})"
                + _machine_note(r)
            )
        if name == "latency-threads" and r.get("concurrency") is not None:
            c = r["concurrency"]
            lines.append(f"{where}: request concurrency {c:.1f} (goal >= 16: {_verdict(c >= 16)})")
        if r["workload"] == "scale":
            lines += scale_goals(r)
    return lines


def _machine_note(row: dict[str, Any]) -> str:
    """What else ran on the machine during the stages, when it was measured.

    >>> _machine_note({"stages_cpu_util": 1.76, "stages_machine_busy": 1.97, "stages_steal": 0.02})
    '; the machine was busy 1.97 (others 0.21) with 0.02 stolen'
    """
    busy, steal = row.get("stages_machine_busy"), row.get("stages_steal")
    if busy is None or steal is None:
        return ""
    others = busy - row["stages_cpu_util"]
    return f"; the machine was busy {busy:.2f} (others {others:.2f}) with {steal:.2f} stolen"


def scale_goals(r: dict[str, Any]) -> list[str]:
    """The scale goals a scale row measured. The rate is judged only for the
    whole group's plan, the batched one the goal is about: a plan of fewer
    arrays has fewer tasks than the bound on the graph, one per node.

    >>> scale_goals({"arrays": 10, "run_arrays": 1, "tasks_per_s": 267.0})
    ['scale: 267 copy tasks/s for 1 of the 10 arrays, not judged (the goal is ...)']
    >>> scale_goals({"arrays": 10, "run_arrays": 10, "tasks_per_s": 1085.0})
    ['scale: 1085 copy tasks/s (goal >= 1000: met)']
    """
    lines = []
    arrays, wall = r.get("arrays"), r.get("wall_s")
    limit = {10: 3.0, 100: 20.0}.get(int(arrays or 0))
    if wall is not None and limit is not None:
        lines.append(
            f"scale {arrays:.0f} arrays: rechunk() {wall:.2f} s (goal < {limit:.0f} s: "
            f"{_verdict(wall < limit)})"
        )
    if r.get("peak_rss_mib") is not None:
        peak = r["peak_rss_mib"]
        lines.append(f"scale: client RSS {peak:.0f} MiB (goal < 1024: {_verdict(peak < 1024)})")
    if r.get("graph_nodes") is not None:
        nodes = r["graph_nodes"]
        lines.append(
            f"scale: {nodes:.0f} graph nodes (goal about <= 1e5: {_verdict(nodes <= 1e5)})"
        )
    if r.get("tasks_per_s") is not None:
        rate, ran = r["tasks_per_s"], r.get("run_arrays")
        if ran is not None and arrays is not None and ran < arrays:
            lines.append(
                f"scale: {rate:.0f} copy tasks/s for {ran:.0f} of the {arrays:.0f} arrays, not "
                f"judged (the goal is for the whole group: --scale-run-arrays {arrays:.0f})"
            )
        else:
            lines.append(f"scale: {rate:.0f} copy tasks/s (goal >= 1000: {_verdict(rate >= 1000)})")
    return lines
