"""The ``rayfl`` command line.

    rayfl run [PRESET_OR_YAML] [--set key.path=value ...] [--output DIR] [--address ADDR]
    rayfl run --resume RUN_DIR [--set iterations=N]
    rayfl tune SEARCH_YAML [--set ...] [--address ADDR] [--resume]
    rayfl reproduce akafl|incentive [--quick] [--seeds N] [--output DIR] [--address ADDR]
    rayfl cluster check [PRESET_OR_YAML] [--address ADDR]
    rayfl presets
    rayfl plot RUN_DIR [--out DIR]

User errors (bad config, missing data, unwritable folder) print one line and exit with 2; no
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayfl.errors import RayflError

DEFAULT_PRESET = "akafl-rj"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    from rayfl import __version__

    p = argparse.ArgumentParser(prog="rayfl", description="Federated learning simulations on Ray.")
    p.add_argument("--version", action="version", version=f"rayfl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run an experiment from a preset or a YAML file")
    r.add_argument(
        "config",
        nargs="?",
        default=None,
        help="preset name (see `rayfl presets`) or YAML path (default: akafl-rj)",
    )
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set aggregation.k=5 (repeatable)",
    )
    r.add_argument("--output", "-o", help="run folder (default: runs/<name>-<timestamp>)")
    r.add_argument(
        "--address", help="Ray cluster address to connect to (default: start a local Ray)"
    )
    r.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    r.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    r.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    t = sub.add_parser("tune", help="search hyperparameters with Ray Tune (tune_configs/*.yaml)")
    t.add_argument("search", help="a search YAML, e.g. tune_configs/smoke.yaml")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the base experiment (repeatable)",
    )
    t.add_argument("--address", help="Ray cluster address to connect to")
    t.add_argument("--storage-path", help="where Tune writes (default: the YAML's storage_path)")
    t.add_argument("--resume", action="store_true", help="resume an interrupted search")

    rp = sub.add_parser("reproduce", help="reproduce a paper's experiments (tables and figures)")
    rp.add_argument("name", help="akafl | incentive")
    rp.add_argument("--quick", action="store_true", help="a small version (minutes; used in CI)")
    rp.add_argument("--seeds", type=int, help="seeds per configuration (default: the paper's)")
    rp.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help="shorten every run to N iterations (akafl) or rounds (incentive)",
    )
    rp.add_argument(
        "--only",
        metavar="GROUPS",
        help="akafl: only these groups of arms, comma-separated (paper, stragglers, stale, k)",
    )
    rp.add_argument("--output", "-o", help="output folder (default: reproduce/<name>-<timestamp>)")
    rp.add_argument("--address", help="Ray cluster address to connect to")
    rp.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    cl = sub.add_parser("cluster", help="inspect the Ray cluster")
    cl.add_argument("action", choices=["check"], help="check: nodes, GPUs and worker placement")
    cl.add_argument("config", nargs="?", default="akafl-rj", help="preset name or YAML path")
    cl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cl.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or auto)")

    sub.add_parser("presets", help="list the shipped presets")

    pl = sub.add_parser("plot", help="draw a run folder's figures (PNG)")
    pl.add_argument("run_dir", help="a folder written by `rayfl run`")
    pl.add_argument("--out", help="output folder (default: RUN_DIR/plots)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "reproduce":
            return _reproduce(args)
        if args.command == "cluster":
            return _cluster(args)
        if args.command == "presets":
            return _presets()
        if args.command == "plot":
            return _plot(args)
        _parser().print_help()
        return EXIT_USER_ERROR
    except RayflError as e:
        print(f"rayfl: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


def _run(args: argparse.Namespace) -> int:
    from rayfl.config import dump_config, load_config

    if args.resume is not None:
        if args.config is not None or args.output is not None:
            raise RayflError(
                "--resume continues the run folder's own config: drop the config and --output "
                "arguments (use --set to change e.g. iterations)"
            )
        from rayfl.server.driver import read_checkpoint
        from rayfl.storage import is_uri

        run_dir = args.resume
        if is_uri(run_dir):
            if args.print_config:
                raise RayflError("--print-config takes a local run folder, not a storage URI")
            cfg = None  # rayfl.run fetches the run folder and its config from the storage
        else:
            read_checkpoint(Path(run_dir))  # not a run, or no checkpoint: one line, before Ray
            cfg = load_config(str(Path(run_dir) / "config.yaml"), args.overrides)
    else:
        cfg = load_config(args.config or DEFAULT_PRESET, args.overrides)
    if args.print_config:
        assert cfg is not None
        print(dump_config(cfg), end="")
        return 0
    from rayfl.server.driver import default_run_dir, run

    if args.resume is None:
        assert cfg is not None
        run_dir = args.output or str(default_run_dir(cfg))
    try:
        result = run(
            cfg if cfg is not None else DEFAULT_PRESET,
            overrides=args.overrides if args.resume else (),
            output=None if args.resume else run_dir,
            resume=args.resume,
            address=args.address,
            progress=False if args.no_progress else None,
        )
    except KeyboardInterrupt:
        resumable = "://" in run_dir or (Path(run_dir) / "checkpoint.pkl").is_file()
        hint = f"; resume with: rayfl run --resume {run_dir}" if resumable else ""
        print(f"\nrayfl: interrupted; the results so far are in {run_dir}{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    figures: list[Any] = []
    if not args.no_plot:
        from rayfl.plots import plot_run

        figures = plot_run(result.run_dir)
    where = result.summary.get("storage", str(result.run_dir))
    if "storage" in result.summary and figures:
        from rayfl.storage import push_dir

        push_dir(result.run_dir, where)
    print(format_summary(result.summary, where, len(figures)))
    return 0


def format_summary(summary: dict[str, Any], run_dir: str, n_figures: int = 0) -> str:
    """The one-screen summary printed at the end of a run."""
    rows = [
        ("experiment", summary.get("name")),
        ("status", summary.get("status")),
        ("iterations", summary.get("iterations")),
        ("final accuracy", _fmt(summary.get("final_accuracy"), ".4f")),
        ("best accuracy", _fmt(summary.get("best_accuracy"), ".4f")),
        ("final train loss", _fmt(summary.get("final_train_loss"), ".4f")),
        ("mean K", _fmt(summary.get("mean_k"), ".2f")),
        ("mean staleness", _fmt(summary.get("mean_staleness"), ".2f")),
        ("virtual time", _fmt(summary.get("virtual_time"), ".1f")),
        ("wall time (s)", _fmt(summary.get("driver_wall_s"), ".1f")),
        ("workers", summary.get("num_workers")),
        ("parameters", summary.get("num_parameters")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["", "rayfl run summary", "-" * (width + 20)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows if v is not None]
    lines.append("-" * (width + 20))
    lines.append(f"results: {run_dir}")
    if n_figures:
        lines.append(f"figures: {run_dir}/plots ({n_figures} PNG)")
    return "\n".join(lines)


def _fmt(value: Any, spec: str) -> str | None:
    return None if value is None else format(value, spec)


def _tune(args: argparse.Namespace) -> int:
    from rayfl.tuning import load_search, tune

    load_search(args.search, args.overrides)  # bad input fails before Ray starts
    try:
        outcome = tune(
            args.search,
            args.overrides,
            address=args.address,
            resume=args.resume,
            storage_path=args.storage_path,
        )
    except KeyboardInterrupt:
        print("\nrayfl: interrupted; resume with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    trials = outcome.trials
    cols = [c for c in trials.columns if c.startswith("config/")] + ["objective", "iteration"]
    top = trials.sort_values("objective", ascending=outcome.mode == "min").head(5)[cols]
    print()
    print(f"best trials (objective, {outcome.mode})")
    print(top.to_string(index=False))
    print(f"\nresults:     {outcome.path}")
    print(f"best config: {outcome.path / 'best_config.yaml'}  (rayfl run it unchanged)")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import datetime as dt

    from rayfl.reproduce import get

    fn = get(args.name)
    if args.seeds is not None and args.seeds < 1:
        raise RayflError(f"--seeds={args.seeds} is below 1: use 1 or more seeds")
    if args.iterations is not None and args.iterations < 1:
        raise RayflError(f"--iterations={args.iterations} is below 1: use 1 or more")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.output or f"reproduce/{args.name}{'-quick' if args.quick else ''}-{stamp}")
    extra: dict[str, Any] = {}
    if args.only is not None:
        if args.name != "akafl":
            raise RayflError(f"--only is for `rayfl reproduce akafl`, not {args.name}: drop it")
        extra["only"] = [g.strip() for g in args.only.split(",") if g.strip()]
    try:
        table = fn(
            out,
            quick=args.quick,
            seeds=args.seeds,
            address=args.address,
            progress=False if args.no_progress else None,
            iterations=args.iterations,
            **extra,
        )
    except KeyboardInterrupt:
        print(f"\nrayfl: interrupted; the results so far are in {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(Path(table).read_text())
    print(f"results: {out}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from rayfl.cluster import check

    print(check(args.config, args.overrides, address=args.address))
    return 0


def _presets() -> int:
    import yaml

    from rayfl.config import preset_names, preset_text

    for name in preset_names():
        text = preset_text(name)
        first = next((line[1:].strip() for line in text.splitlines() if line.startswith("#")), "")
        raw = yaml.safe_load(text) or {}
        base = f" (extends {raw['extends']})" if "extends" in raw else ""
        print(f"{name:<12} {first}{base}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from rayfl.plots import plot_run

    paths = plot_run(args.run_dir, args.out)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
