"""Gather every ``run.json`` under a directory (one run, a sweep, or merged shards) into a report.

Writes ``results.csv``, ``results.jsonl`` and ``pareto.png`` (test accuracy - or, for text
pipelines, embedding cosine - vs artifact bytes, one point per run, the Pareto front drawn)
atomically into the directory, and returns the rows plus the headline figures ``demo_seconds``,
``compression_ratio`` and ``acc_drop_points``.

>>> pareto_front([(100, 0.9), (50, 0.95), (200, 0.97), (60, 0.5)])
[(50, 0.95), (200, 0.97)]
"""

from __future__ import annotations

import csv
import io
import json
import os

from jaxcompress.runner.checkpoint import atomic_write, atomic_write_bytes
from jaxcompress.runner.config import ConfigError

COLUMNS = ("run", "final_stage", "accuracy", "acc_drop_points", "sparsity", "bits", "artifact_bytes",
           "compression_ratio", "seconds", "devices", "cosine", "nn_agree")  # the last two: text pipelines


def find_runs(directory: str) -> list[dict]:
    """All ``run.json`` summaries below ``directory`` (sorted by path)."""
    if not os.path.isdir(directory):
        raise ConfigError(f"report directory {directory!r} does not exist")
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in ("stages", "ckpt", "tb"))
        if "run.json" in files:
            with open(os.path.join(root, "run.json")) as f:
                run = json.load(f)
            run["run"] = os.path.relpath(root, directory)
            found.append(run)
    if not found:
        raise ConfigError(f"no finished runs (run.json) under {directory!r}")
    return found


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by a smaller-or-equal, at-least-as-accurate one; sorted by size."""
    front, best = [], float("-inf")
    for size, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((size, acc))
            best = acc
    return front


def rows_of(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        f = r.get("final", {})
        rows.append({"run": r["run"], "final_stage": f.get("stage"), "accuracy": f.get("accuracy"),
                     "acc_drop_points": f.get("acc_drop_points"), "sparsity": f.get("sparsity"), "bits": f.get("bits"),
                     "artifact_bytes": f.get("artifact_bytes"), "compression_ratio": f.get("compression_ratio"),
                     "seconds": r.get("seconds"), "devices": r.get("devices"), "cosine": f.get("cosine"),
                     "nn_agree": f.get("nn_agree")})
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict]) -> str:
    """The runs as aligned text columns (columns no run fills, e.g. cosine for classification, left out)."""
    cols = [c for c in COLUMNS if any(r[c] is not None for r in rows)]
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "accuracy" if any(r["accuracy"] is not None for r in rows) else "cosine"  # text runs: cosine
    ok = [r for r in rows if r["artifact_bytes"] and r[metric] is not None]
    pts = [(r["artifact_bytes"], 100 * r[metric]) for r in ok]
    fig, ax = plt.subplots(figsize=(6, 4))
    if pts:
        ax.scatter(*zip(*pts), label="runs", color="tab:blue")
        for r, (x, y) in zip(ok, pts):
            if r.get("sparsity") is not None and r.get("bits") is not None:
                ax.annotate(f"{r['sparsity']:.2f}/{r['bits']}b", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
        front = pareto_front(pts)
        ax.plot(*zip(*front), "-o", color="tab:red", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("artifact bytes (log)")
    ax.set_ylabel("test accuracy (%)" if metric == "accuracy" else "embedding cosine to the reference (%)")
    ax.grid(True, alpha=0.3)
    if pts:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def headline(runs: list[dict]) -> dict:
    """``demo_seconds``, ``compression_ratio``, ``acc_drop_points`` of the run (or the best run of a sweep:
    the highest compression with at most a 1.0 point drop, else the most accurate)."""
    def fin(r):
        return r.get("final", {})

    ok = [r for r in runs if fin(r).get("acc_drop_points") is not None and fin(r)["acc_drop_points"] <= 1.0
          and fin(r).get("compression_ratio")]
    best = max(ok, key=lambda r: fin(r)["compression_ratio"]) if ok else \
        max(runs, key=lambda r: fin(r).get("accuracy") or 0.0)
    return {"demo_seconds": best.get("seconds"), "compression_ratio": fin(best).get("compression_ratio"),
            "acc_drop_points": fin(best).get("acc_drop_points"), "accuracy": fin(best).get("accuracy"),
            "artifact_bytes": fin(best).get("artifact_bytes"), "run": best["run"], "num_runs": len(runs),
            "stages": best.get("rows", [])}


def report(directory: str, json_path: str | None = None, log=print) -> dict:
    """Print the table, write ``results.csv``/``results.jsonl``/``pareto.png`` (and ``json_path``)."""
    runs = find_runs(directory)
    rows = rows_of(runs)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write(os.path.join(directory, "results.csv"), buf.getvalue())
    atomic_write(os.path.join(directory, "results.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    plot(rows, os.path.join(directory, "pareto.png"))
    head = headline(runs)
    if log:
        if len(runs) == 1 and runs[0].get("rows"):
            from jaxcompress.runner import stages, text_stages

            text = "cosine" in runs[0]["rows"][0]
            log((text_stages.format_table if text else stages.format_table)(runs[0]["rows"]))
        log(table(rows))
        log(f"demo_seconds={_fmt(head['demo_seconds'])} compression_ratio={_fmt(head['compression_ratio'])} "
            f"acc_drop_points={_fmt(head['acc_drop_points'])} (run {head['run']})")
    if json_path:
        atomic_write(json_path, json.dumps(head, indent=1) + "\n")
    return head
