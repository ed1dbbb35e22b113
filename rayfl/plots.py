"""Figures of a finished run: one PNG per metric, an overview grid and an ablation overlay.

Reads what the engine writes into a run folder (``metrics.parquet``, one row per iteration, and
optionally ``updates.parquet``, one row per aggregated update) and draws each metric against
``iteration`` and against ``sys/virtual_time``. Every column except ``iteration`` is optional: a
figure whose column is absent or all-null is skipped, so runs of any preset can be plotted.

matplotlib and pyarrow are imported inside the functions, so ``import rayfl.plots`` stays cheap.
Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas rather than through pyplot:
nothing is registered in pyplot's global figure list (so nothing leaks or needs closing) and the
caller's backend (a notebook's inline backend, say) is left untouched.

Example:
    >>> from rayfl.plots import plot_run, compare_runs
    >>> plot_run("runs/akafl-rj-mnist")  # doctest: +SKIP
    [PosixPath('runs/akafl-rj-mnist/plots/accuracy.png'), ...]
    >>> compare_runs(["runs/wkafl", "runs/akafl-rj"], "ablation.png", x="sys/virtual_time")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rayfl.errors import RayflError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]

__all__ = ["plot_run", "compare_runs", "compare_histograms"]

_DPI = 120
_PANEL_SIZE = (6.0, 4.0)  # inches per panel
_ALPHA_RAW = 0.25  # the faint raw curve under a moving average
_LOG_Y_RATIO = 10.0  # draw the learning rate on a log axis when max/min exceeds this

# Axis labels with units; a column missing here is labelled by its own name.
_LABELS = {
    "iteration": "iteration",
    "sys/virtual_time": "virtual time (units)",
    "sys/wall_s": "wall time (s)",
    "train/loss": "train loss",
    "eval/loss": "eval loss",
    "eval/accuracy": "eval accuracy",
    "agg/k": "k (updates per aggregation)",
    "agg/lr": "learning rate",
    "agg/staleness_min": "min staleness (versions)",
    "agg/staleness_mean": "mean staleness (versions)",
    "agg/staleness_max": "max staleness (versions)",
    "agg/selected": "selected updates",
    "agg/max_weight": "max update weight",
    "agg/remodels": "remodels",
    "agg/kept_previous": "kept previous model",
}

# The second x axis of the per-metric figures: virtual time, else wall time for runs without one.
_TIME_AXES = ("sys/virtual_time", "sys/wall_s")

Columns = dict[str, np.ndarray]  # column name -> (n_rows,) float64, nulls as NaN
Drawer = Callable[["Axes", Columns, str], bool]  # draws one metric against x; False if no data


def _label(column: str) -> str:
    return _LABELS.get(column, column)


# --- reading a run folder ---


def _not_a_run(path: PathLike) -> RayflError:
    return RayflError(
        f"{path} is not a rayfl run folder (no metrics.parquet): "
        "pass the folder printed at the end of `rayfl run`"
    )


def _read_columns(path: pathlib.Path) -> Columns:
    """Numeric columns of a run's table as float64 arrays, nulls as NaN; other columns dropped.
    Reads the compacted file and any parts a crashed run left (:mod:`rayfl.partlog`)."""
    import pyarrow as pa

    from rayfl.partlog import PartLog  # pyarrow: not at import time (a cheap import)

    table = PartLog(path).table()
    columns: Columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            columns[name] = np.asarray(column.cast(pa.float64()).to_numpy(), dtype=np.float64)
    return columns


def _read_metrics(run_dir: PathLike) -> Columns:
    from rayfl.partlog import PartLog

    path = pathlib.Path(run_dir) / "metrics.parquet"
    if not PartLog(path).exists():
        raise _not_a_run(run_dir)
    columns = _read_columns(path)
    if "iteration" not in columns:
        raise RayflError(
            f"{path} has no 'iteration' column: it was not written by rayfl; rerun `rayfl run`"
        )
    return columns


def _run_name(run_dir: PathLike) -> str:
    """``summary.json``'s ``"name"`` if there is one, else the folder name."""
    folder = pathlib.Path(run_dir)
    try:
        name = json.loads((folder / "summary.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    if isinstance(name, str) and name.strip():
        return name.strip()
    return folder.resolve().name


# --- series helpers ---


def _series(columns: Columns, x: str, *ys: str) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Rows where ``x`` and every ``ys`` are finite, sorted by ``x``; None if there are none."""
    if x not in columns or any(y not in columns for y in ys):
        return None
    keep = np.isfinite(columns[x])
    for y in ys:
        keep &= np.isfinite(columns[y])
    if not keep.any():
        return None
    order = np.argsort(columns[x][keep], kind="stable")
    return columns[x][keep][order], [columns[y][keep][order] for y in ys]


def _has(columns: Columns, name: str) -> bool:
    return name in columns and bool(np.isfinite(columns[name]).any())


def _smoothing_window(n: int) -> int:
    """Points per moving-average window: ~5% of the curve, between 1 and 100."""
    return max(1, min(100, n // 20))


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points, same length as ``y``; the first points average fewer.

    >>> _moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2)
    array([1. , 1.5, 2.5, 3.5])
    """
    if window <= 1 or y.size == 0:
        return y.astype(np.float64, copy=True)
    cumsum = np.cumsum(y, dtype=np.float64)
    out = np.empty(y.size, dtype=np.float64)
    head = min(window, y.size)
    out[:head] = cumsum[:head] / np.arange(1, head + 1)
    out[head:] = (cumsum[head:] - cumsum[:-head]) / window
    return out


def _wants_log_y(y: np.ndarray) -> bool:
    """True if ``y`` is positive and spans more than a factor of 10 (e.g. a decaying lr)."""
    y = y[np.isfinite(y)]
    return y.size > 0 and bool(y.min() > 0) and bool(y.max() / y.min() > _LOG_Y_RATIO)


# --- one drawer per metric: (ax, columns, x) -> drew anything ---


def _draw_accuracy(ax: Axes, columns: Columns, x: str) -> bool:
    found = _series(columns, x, "eval/accuracy")  # sparse: only evaluated iterations
    if found is None:
        return False
    xs, (acc,) = found
    ax.plot(xs, acc, marker="o", markersize=3, label="eval accuracy")
    ax.set_ylabel("accuracy")
    return True


def _draw_loss(ax: Axes, columns: Columns, x: str) -> bool:
    drew = False
    train = _series(columns, x, "train/loss")
    if train is not None:
        xs, (loss,) = train
        window = _smoothing_window(loss.size)
        ax.plot(xs, loss, color="C0", alpha=_ALPHA_RAW, linewidth=0.8, label="train loss")
        if window > 1:
            ax.plot(
                xs,
                _moving_average(loss, window),
                color="C0",
                linewidth=1.8,
                label=f"train loss, mean of {window}",
            )
        drew = True
    evaluated = _series(columns, x, "eval/loss")
    if evaluated is not None:
        xs, (loss,) = evaluated
        ax.plot(xs, loss, color="C1", marker="o", markersize=3, label="eval loss")
        drew = True
    if drew:
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    return drew


def _draw_k(ax: Axes, columns: Columns, x: str) -> bool:
    found = _series(columns, x, "agg/k")
    if found is None:
        return False
    xs, (k,) = found
    from matplotlib.ticker import MaxNLocator

    ax.step(xs, k, where="post", label="k")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # k counts updates
    ax.set_ylabel(_label("agg/k"))
    return True


def _draw_staleness(ax: Axes, columns: Columns, x: str) -> bool:
    drew = False
    band = _series(columns, x, "agg/staleness_min", "agg/staleness_max")
    if band is not None:
        xs, (low, high) = band
        ax.fill_between(xs, low, high, color="C0", alpha=_ALPHA_RAW, linewidth=0, label="min-max")
        drew = True
    else:  # only one edge recorded: draw it as a line
        for name, style in (("agg/staleness_min", ":"), ("agg/staleness_max", "--")):
            edge = _series(columns, x, name)
            if edge is not None:
                xs, (y,) = edge
                ax.plot(xs, y, color="C0", linestyle=style, linewidth=1, label=name.split("_")[-1])
                drew = True
    mean = _series(columns, x, "agg/staleness_mean")
    if mean is not None:
        xs, (y,) = mean
        ax.plot(xs, y, color="C0", linewidth=1.5, label="mean")
        drew = True
    if drew:
        ax.set_ylabel("staleness (versions)")
        ax.legend(fontsize=8)
    return drew


def _draw_lr(ax: Axes, columns: Columns, x: str) -> bool:
    found = _series(columns, x, "agg/lr")
    if found is None:
        return False
    xs, (lr,) = found
    ax.plot(xs, lr, label="learning rate")
    if _wants_log_y(lr):
        ax.set_yscale("log")
    ax.set_ylabel(_label("agg/lr"))
    return True


def _draw_clock(ax: Axes, columns: Columns, x: str) -> bool:
    for time in _TIME_AXES:
        found = _series(columns, x, time)
        if found is not None:
            xs, (t,) = found
            ax.plot(xs, t, label=_label(time))
            ax.set_ylabel(_label(time))
            return True
    return False


# (file stem, title, drawer, columns any of which makes the figure worth drawing)
_FIGURES: list[tuple[str, str, Drawer, tuple[str, ...]]] = [
    ("accuracy", "eval accuracy", _draw_accuracy, ("eval/accuracy",)),
    ("loss", "loss", _draw_loss, ("train/loss", "eval/loss")),
    ("k", "k: updates per aggregation", _draw_k, ("agg/k",)),
    (
        "staleness",
        "staleness of aggregated updates",
        _draw_staleness,
        ("agg/staleness_min", "agg/staleness_mean", "agg/staleness_max"),
    ),
    ("lr", "server learning rate", _draw_lr, ("agg/lr",)),
]

# The overview grid, row-major, all against iteration.
_OVERVIEW: list[tuple[str, Drawer]] = [
    ("eval accuracy", _draw_accuracy),
    ("loss", _draw_loss),
    ("k", _draw_k),
    ("staleness", _draw_staleness),
    ("learning rate", _draw_lr),
    ("clock", _draw_clock),
]


# --- figures ---


def _new_figure(nrows: int, ncols: int) -> tuple[Figure, np.ndarray]:
    """A figure on an Agg canvas, outside pyplot's registry; axes as an (nrows, ncols) array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_PANEL_SIZE[0] * ncols, _PANEL_SIZE[1] * nrows), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    fig.clear()  # free the artists now; the figure is not in pyplot's list, so no close needed
    return path


def _metric_figure(
    columns: Columns, name: str, title: str, draw: Drawer, path: pathlib.Path
) -> pathlib.Path:
    """One panel per x axis: iteration, then virtual time (or wall time) if recorded."""
    xs = ["iteration"] + [t for t in _TIME_AXES if _has(columns, t)][:1]
    fig, axes = _new_figure(1, len(xs))
    for ax, x in zip(axes[0], xs, strict=True):
        draw(ax, columns, x)
        ax.set_xlabel(_label(x))
        ax.set_title(f"vs {_label(x)}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: {title}")
    return _save(fig, path)


def _overview_figure(columns: Columns, name: str, path: pathlib.Path) -> pathlib.Path:
    fig, axes = _new_figure(2, 3)
    for ax, (title, draw) in zip(axes.flat, _OVERVIEW, strict=True):
        ax.set_title(title, fontsize=10)
        if draw(ax, columns, "iteration"):
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{name}: overview")
    return _save(fig, path)


def _staleness_hist_figure(staleness: np.ndarray, name: str, path: pathlib.Path) -> pathlib.Path:
    fig, axes = _new_figure(1, 1)
    ax = axes[0, 0]
    low, high = float(staleness.min()), float(staleness.max())
    integral = bool(np.all(staleness == np.round(staleness)))
    if integral and high - low <= 60:  # one bar per staleness value
        bins: Any = np.arange(low - 0.5, high + 1.5)
    else:
        bins = 50
    ax.hist(staleness, bins=bins, color="C0", edgecolor="white", linewidth=0.5)
    mean = float(staleness.mean())
    ax.axvline(mean, color="C1", linestyle="--", label=f"mean {mean:.2f}")
    ax.set_xlabel("staleness (versions)")
    ax.set_ylabel("updates")
    ax.set_title(f"{name}: staleness of {staleness.size} aggregated updates")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


# --- public API ---


def plot_run(run_dir: PathLike, out_dir: PathLike | None = None) -> list[pathlib.Path]:
    """Writes one PNG per recorded metric of a run, plus an overview, and returns their paths.

    Each metric figure (``accuracy.png``, ``loss.png``, ``k.png``, ``staleness.png``, ``lr.png``)
    has two panels side by side: the metric against ``iteration`` and against
    ``sys/virtual_time`` (``sys/wall_s`` if the run has no virtual clock; one panel if neither).
    A figure whose columns are absent or all-null is skipped. ``overview.png`` is a 2x3 grid of
    the main curves against iteration; ``staleness_hist.png`` is drawn when the run folder has an
    ``updates.parquet`` with a ``staleness`` column.

    Args:
        run_dir: a run folder written by ``rayfl run`` (must contain ``metrics.parquet``).
        out_dir: where to write the PNGs; defaults to ``<run_dir>/plots/``, created if needed.

    Returns:
        The paths written, in the order above.

    Raises:
        RayflError: ``run_dir`` is missing or has no ``metrics.parquet``.

    Example:
        >>> paths = plot_run("runs/akafl-rj-mnist")  # doctest: +SKIP
        >>> [p.name for p in paths]  # doctest: +SKIP
        ['accuracy.png', 'loss.png', 'k.png', 'staleness.png', 'lr.png', 'overview.png']
    """
    run = pathlib.Path(run_dir)
    columns = _read_metrics(run)
    out = pathlib.Path(out_dir) if out_dir is not None else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    name = _run_name(run)

    written: list[pathlib.Path] = []
    for stem, title, draw, needs in _FIGURES:
        if any(_has(columns, c) for c in needs):
            written.append(_metric_figure(columns, name, title, draw, out / f"{stem}.png"))
    if any(_has(columns, c) for _, _, _, needs in _FIGURES for c in needs):
        written.append(_overview_figure(columns, name, out / "overview.png"))

    from rayfl.partlog import PartLog

    updates_path = run / "updates.parquet"
    if PartLog(updates_path).exists():
        staleness = _read_columns(updates_path).get("staleness", np.empty(0))
        staleness = staleness[np.isfinite(staleness)]
        if staleness.size:
            written.append(_staleness_hist_figure(staleness, name, out / "staleness_hist.png"))
    return written


def _columns_with(run_dir: PathLike, needed: Sequence[str]) -> Columns:
    """The run's metric columns; a RayflError names the first of ``needed`` without values."""
    columns = _read_metrics(run_dir)
    for column in needed:
        if not _has(columns, column):
            raise RayflError(
                f"{run_dir} has no values for '{column}' in metrics.parquet: "
                f"pick one of {sorted(c for c in columns if _has(columns, c))}"
            )
    return columns


def _compared_series(
    run_dir: PathLike, metric: str, x: str, diff: bool
) -> tuple[str, str, tuple[np.ndarray, list[np.ndarray]]]:
    """(name, folder name, (xs, [ys])) of one run for :func:`compare_runs`; with ``diff`` the ys
    are the increments from one row to the next."""
    found = _series(_columns_with(run_dir, (metric, x)), x, metric)
    assert found is not None  # both columns have values, checked above
    if diff:
        xs, (ys,) = found
        found = (xs[1:], [np.diff(ys)])
    return _run_name(run_dir), pathlib.Path(run_dir).resolve().name, found


def _draw_runs(
    ax: Axes,
    runs: list[tuple[str, str, tuple[np.ndarray, list[np.ndarray]]]],
    *,
    noisy: bool,
) -> list[np.ndarray]:
    """One curve per ``(name, folder, (xs, [ys]))``, labelled by name (and folder where two
    runs share a name); a ``noisy`` curve is drawn faint under its moving average. Returns
    the ys."""
    names = [name for name, _, _ in runs]
    every_y = []
    for i, (name, folder, (xs, (ys,))) in enumerate(runs):
        label = name if names.count(name) == 1 or name == folder else f"{name} ({folder})"
        color = f"C{i % 10}"
        window = _smoothing_window(ys.size)
        if noisy and window > 1:  # noisy per-iteration curve
            ax.plot(xs, ys, color=color, alpha=_ALPHA_RAW, linewidth=0.8)
            ax.plot(xs, _moving_average(ys, window), color=color, linewidth=1.8, label=label)
        else:
            sparse = ys.size < 60
            ax.plot(xs, ys, color=color, marker="o" if sparse else None, markersize=3, label=label)
        every_y.append(ys)
    return every_y


def _draw_histograms(
    ax: Axes, runs: list[tuple[str, np.ndarray]], edges: np.ndarray, threshold: float | None
) -> None:
    """One step histogram per ``(name, values)``, as shares of the run's iterations; with a
    ``threshold`` the label gives the share above it."""
    for i, (name, values) in enumerate(runs):
        label = name
        if threshold is not None:
            label = f"{name}: {float(np.mean(values > threshold)):.1%} above {threshold:g}"
        weights = np.full(values.size, 1.0 / values.size)
        ax.hist(
            values,
            bins=edges,
            weights=weights,
            histtype="step",
            linewidth=1.6,
            color=f"C{i % 10}",
            label=label,
        )


def _histogram_edges(pooled: np.ndarray, bins: int, log_x: bool) -> np.ndarray:
    """``bins + 1`` edges over the pooled values' range (log-spaced if ``log_x``); a range of
    one value is widened a hair so the bins have a width."""
    low, high = float(pooled.min()), float(pooled.max())
    if high <= low:
        high = low + 1e-12 if low == 0 else low * (1 + 1e-6) + 1e-12
    return np.geomspace(low, high, bins + 1) if log_x else np.linspace(low, high, bins + 1)


def compare_runs(
    run_dirs: Sequence[PathLike],
    out_path: PathLike,
    metric: str = "eval/accuracy",
    x: str = "iteration",
    *,
    diff: bool = False,
    title: str | None = None,
) -> pathlib.Path:
    """Overlays one metric of several runs in one figure, e.g. the arms of an ablation.

    Each run is labelled by ``summary.json``'s ``"name"``, else its folder name. Sparse columns
    (eval) are drawn through their recorded points only; ``train/*`` curves are drawn faint with a
    moving average on top. The y axis is logarithmic when the metric is positive and spans more
    than 10x (a decaying learning rate).

    Args:
        run_dirs: run folders written by ``rayfl run``.
        out_path: the image to write; its suffix picks the format (``.png``, ``.pdf``, ``.svg``).
        metric: the column of ``metrics.parquet`` to compare, e.g. ``"train/loss"``.
        x: the column to plot it against: ``"iteration"``, ``"sys/virtual_time"``, ...
        diff: plot the increment of ``metric`` from one row to the next instead of its value,
            e.g. ``metric="sys/virtual_time", diff=True``: the virtual time each iteration took
            (drawn faint, with a moving average on top).
        title: the figure's title; default "<metric> vs <x>".

    Returns:
        ``out_path`` as a ``pathlib.Path``.

    Raises:
        RayflError: no runs given, a folder is not a run, or a run has no values for
            ``metric`` or ``x``.

    Example:
        >>> compare_runs(["runs/wkafl", "runs/akafl-rj"], "acc.png", x="sys/virtual_time")  # doctest: +SKIP
    """
    if not run_dirs:
        raise RayflError("compare_runs got no run folders: pass at least one run folder")
    runs = [_compared_series(run_dir, metric, x, diff) for run_dir in run_dirs]
    fig, axes = _new_figure(1, 1)
    ax = axes[0, 0]
    every_y = _draw_runs(ax, runs, noisy=diff or metric.startswith("train/"))
    if _wants_log_y(np.concatenate(every_y)):
        ax.set_yscale("log")
    ax.set_xlabel(_label(x))
    ylabel = f"increment of {_label(metric)} per row" if diff else _label(metric)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} vs {_label(x)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    path = pathlib.Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


def compare_histograms(
    run_dirs: Sequence[PathLike],
    out_path: PathLike,
    metric: str,
    *,
    bins: int = 40,
    threshold: float | None = None,
    log_x: bool | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """Overlays the histograms of one per-iteration metric of several runs (share of iterations).

    Used for the AKAFL-RJ paper's Fig. 9 (``agg/max_weight``: how often one update dominates the
    estimate, ``threshold=0.8``) and Fig. 10 (``agg/lr``). With ``threshold``, a dashed line marks
    it and each label gives the share of iterations above it.

    Args:
        run_dirs: run folders written by ``rayfl run``.
        out_path: the image to write.
        metric: a column of ``metrics.parquet``.
        bins: number of bins, shared by all runs (over the pooled range).
        threshold: mark this value and report the share of iterations above it.
        log_x: logarithmic bins; default when the values are positive and span more than 10x.
        title: the figure's title; default "histogram of <metric>".

    Returns:
        ``out_path`` as a ``pathlib.Path``.

    Raises:
        RayflError: no runs given, a folder is not a run, or a run has no values for ``metric``.
    """
    if not run_dirs:
        raise RayflError("compare_histograms got no run folders: pass at least one run folder")
    runs = []
    for run_dir in run_dirs:
        columns = _columns_with(run_dir, (metric,))
        values = columns[metric][np.isfinite(columns[metric])]
        runs.append((_run_name(run_dir), values))
    pooled = np.concatenate([v for _, v in runs])
    if log_x is None:
        log_x = _wants_log_y(pooled)
    edges = _histogram_edges(pooled, bins, log_x)

    fig, axes = _new_figure(1, 1)
    ax = axes[0, 0]
    _draw_histograms(ax, runs, edges, threshold)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(_label(metric))
    ax.set_ylabel("share of iterations")
    ax.set_title(title or f"histogram of {_label(metric)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = pathlib.Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
