"""The learning benchmark's PNGs (bench/learning/*.png): reward dimensions, one metric across arms and
the evaluations, from the same rows and metrics records as bench/learning_report.py; matplotlib only here."""

from __future__ import annotations

from pathlib import Path

from bench.learning_report import REWARD_DIMS, _pct, label, series


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever $DISPLAY says
    import matplotlib.pyplot as plt

    return plt


def _axes(title: str, ylabel: str, ncols: int = 1):
    from matplotlib.ticker import MaxNLocator

    fig, axes = _pyplot().subplots(1, ncols, figsize=(6.4 * ncols, 4.0), squeeze=False)
    for ax in axes.flat:
        ax.set_ylabel(ylabel)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig, list(axes.flat)


def figure_rewards(rows: list[dict], arm: str, name: str | None = None):
    """Every reward dimension's mean against step for one arm (its table label `name`); exemplar (at
    most 0.01) on its own axis."""
    fig, (ax, ax_ex) = _axes(f"reward dimensions, {name or label(arm)}", "mean over completions", 2)
    for dim in REWARD_DIMS:
        steps, values = series(rows, f"reward/{dim}_mean")
        if steps:
            (ax_ex if dim == "exemplar" else ax).plot(steps, values, marker="o", markersize=3, label=dim)
    ax.set_ylim(-0.02, 1.02)      # every dimension but exemplar is in [0, 1]
    ax_ex.set_ylim(bottom=-0.0005)  # exemplar is 0 or the bonus (0.01 at most by default)
    ax_ex.set_title("exemplar (own axis)", fontsize=9)
    for a in (ax, ax_ex):
        if a.lines:
            a.legend(fontsize=8)
    return fig


def figure_arms(metrics: dict[str, list[dict]], key: str, title: str, names: dict[str, str] | None = None):
    """One metric against step, one line per arm (and seed), labelled by `names` (stage -> table label)."""
    fig, (ax,) = _axes(title, key)
    for arm, rows in metrics.items():
        steps, values = series(rows, key)
        ax.plot(steps, values, marker="o", markersize=3, label=(names or {}).get(arm) or label(arm))
    ax.set_ylim(-0.02, 1.02)  # both plotted metrics are shares / means of {0, 1} values
    ax.legend(fontsize=8)
    return fig


def figure_eval(rows: list[dict]):
    """ToolRL-test correct and BFCL non-live accuracy per stage, as grouped bars (percent)."""
    fig, (ax,) = _axes("evaluation per stage", "%")
    x = list(range(len(rows)))
    for offset, key, suite in ((-0.2, "toolrl_correct", "ToolRL test correct"),
                               (0.2, "bfcl_non_live", "BFCL non-live AST")):
        values = [100 * (r[key] or 0.0) for r in rows]  # a missing value draws as no bar
        bars = ax.bar([i + offset for i in x], values, width=0.4, label=suite)
        ax.bar_label(bars, labels=[_pct(r[key]) for r in rows], fontsize=7)
    ax.set_xticks(x, [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_xlabel("")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return fig


def write_plots(rows: list[dict], metrics: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """Every figure as a PNG under out_dir (its old PNGs removed first); returns the paths written."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    figures = {"eval": figure_eval(rows)}
    names = {r["stage"]: r["label"] for r in rows}
    if metrics:
        figures["correct"] = figure_arms(metrics, "reward/correct_mean", "correct per step, every arm", names)
        figures["all_fail"] = figure_arms(metrics, "sampler/all_fail_share", "all-fail share per step, every arm",
                                          names)
        figures.update({f"rewards_{arm}": figure_rewards(r, arm, names.get(arm)) for arm, r in metrics.items()})
    paths = []
    for name, fig in figures.items():
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=100)
        plt.close(fig)
        paths.append(out_dir / f"{name}.png")
    return paths
