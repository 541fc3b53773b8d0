"""
The lab's report, rebuilt from the stored files alone (``context.json``, ``reference.json``, ``options/*.json``):
a markdown table per run folder and two plots (matplotlib, Agg): the variance against the batch size (log-log) and
the cosine of each option's mean gradient to the reference against the batch size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (a folder holding ``context.json``), sorted."""
    root = Path(root)
    return sorted(path.parent for path in root.rglob("context.json"))


def load_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """
    The context and the option records of one run folder.

    :param folder: a run folder
    :return: context (with the reference's record under ``reference``), records sorted by batch size then name
    """
    context = json.loads((folder / "context.json").read_text())
    reference_path = folder / "reference.json"
    context["reference"] = json.loads(reference_path.read_text()) if reference_path.exists() else None
    records = [json.loads(path.read_text()) for path in sorted((folder / "options").glob("*.json"))]
    digest = context["reference"]["digest"] if context["reference"] else None
    records = [record for record in records if record.get("reference") == digest]
    return context, sorted(records, key=lambda r: (r["batch_size"], r["option"]))


def equal_steps_variance(record: dict[str, Any]) -> float:
    """tr(S) times the mean env steps per batch: a variance per env step that does not depend on the batch size."""
    return float(record["policy"]["trace"]) * float(record["env_steps"])


def noise_to_signal(record: dict[str, Any]) -> float:
    """
    tr(S) x env steps per batch / ||E[g]||^2, with ||E[g]||^2 estimated without bias by ||m||^2 - tr(S)/R: the
    variance at equal env steps in units of the squared mean gradient, which does not depend on the gradient's scale
    (GRPO's std scaling, ISPG's self-normalisation). inf when the estimate of ||E[g]||^2 is not positive.
    """
    trace = float(record["policy"]["trace"])
    mean = record["policy"]["mean"]
    signal = sum(v * v for v in mean) - trace / float(record["R"])
    return trace * float(record["env_steps"]) / signal if signal > 0 else float("inf")


def run_table(context: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """
    The markdown table of one run: per batch size and option, the variance (trace, and at equal env steps relative
    to the plain option at the same batch size), the cosine to the reference and the relative bias +- SE.
    """
    title = f"### {context['algo']} on {context['env']}, checkpoint {context['checkpoint']}"
    if context.get("behind"):
        behind = int(context["behind"])
        title += f", behaviour policy {behind} update{'' if behind == 1 else 's'} behind"
    reference = context["reference"] or {}
    if not reference:
        ref_text = "not computed yet (the run has not started its options)"
    elif reference.get("exact"):
        ref_text = "the exact gradient"
    else:
        ref_text = (
            f"the mean of K={reference.get('K')} gradients of `{reference.get('option')}` at "
            f"{reference.get('batch_size')} episodes"
        )
    lines = [
        title,
        "",
        f"Reference: {ref_text}. Variance at equal steps: tr(S) x env steps per batch, relative to "
        f"`{context['plain']}` at the same batch size; noise/signal: the same divided by ||E[g]||^2 (scale-free; n/a "
        "where ||E[g]||^2 is not resolved from zero).",
        "",
        "| batch (episodes) | option | env steps / batch | tr(S) | var. at equal steps (rel.) "
        "| noise/signal at equal steps (rel.) | cosine to ref. | rel. bias +- SE | R |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain = {r["batch_size"]: r for r in records if r["option"] == context["plain"]}
    for record in records:
        base = plain.get(record["batch_size"])
        relative = (
            f"{equal_steps_variance(record) / equal_steps_variance(base):.3g}"
            if base is not None and equal_steps_variance(base) > 0
            else "n/a"
        )
        base_ns = noise_to_signal(base) if base is not None else float("inf")
        ns = noise_to_signal(record)
        relative_ns = f"{ns / base_ns:.3g}" if 0 < base_ns < float("inf") and ns < float("inf") else "n/a"
        bias = record["bias"]
        lines.append(
            f"| {record['batch_size']} | `{record['option']}` | {record['env_steps']:.0f} | "
            f"{record['policy']['trace']:.4g} +- {record['policy']['trace_se']:.2g} | {relative} | {relative_ns} | "
            f"{bias['cosine']:.3f} | {bias['bias_rel']:.3f} +- {bias['bias_rel_se']:.3f} | {record['R']} |"
        )
    return "\n".join(lines) + "\n"


def plot_run(context: dict[str, Any], records: list[dict[str, Any]], out: Path) -> list[Path]:
    """
    ``variance.png`` (tr(S) against the batch size, log-log) and ``cosine.png`` (cosine to the reference against the
    batch size) in ``out``.

    :return: the written paths
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    options = sorted({r["option"] for r in records})
    paths = []
    for name, key, log in (("variance", "trace", True), ("cosine", "cosine", False)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colours = plt.get_cmap("tab20")
        for number, option in enumerate(options):
            rows = [r for r in records if r["option"] == option]
            xs = [r["batch_size"] for r in rows]
            ys = [r["policy"]["trace"] if key == "trace" else r["bias"]["cosine"] for r in rows]
            if log:  # a zero variance (e.g. every advantage zero) has no place on a log scale
                kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
                xs, ys = [x for x, _ in kept], [y for _, y in kept]
            ax.plot(xs, ys, marker="os^v"[number // 20 % 4], color=colours(number % 20), label=option)
        ax.set_xscale("log")
        sizes = sorted({r["batch_size"] for r in records})
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("batch size (episodes)")
        ax.set_ylabel("tr(Cov[g])" if log else "cosine(mean g, reference)")
        ax.set_title(
            f"{context['algo']} {context['env']} {context['checkpoint']}"
            + (f" behind {context['behind']}" if context.get("behind") else "")
        )
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def build_report(root: Path, plots: bool = True) -> str:
    """
    The markdown report of every run folder under ``root`` (plots written into each run folder's ``plots/``).

    :param root: a run folder or a folder of run folders
    :param plots: write the plots too
    :return: the markdown text
    """
    runs = find_runs(Path(root))
    if not runs:
        raise FileNotFoundError(f"no lab run (a folder with context.json) under {root}")
    parts = []
    for folder in runs:
        context, records = load_run(folder)
        parts.append(run_table(context, records))
        if plots and records:
            for path in plot_run(context, records, folder / "plots"):
                parts.append(f"![{path.stem}]({path.relative_to(Path(root)) if Path(root) in path.parents else path})\n")
    return "\n".join(parts)
