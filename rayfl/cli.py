"""The ``rayfl`` command line.

    rayfl run [PRESET_OR_YAML] [--set key.path=value ...] [--output DIR] [--address ADDR]
    rayfl run --resume RUN_DIR [--set iterations=N]
    rayfl tune SEARCH_YAML [--set ...] [--address ADDR] [--resume]
    rayfl reproduce akafl|incentive [--quick] [--seeds N] [--output DIR] [--address ADDR]
    rayfl reproduce akafl --paper-scale [--results DIR] [--report-only] [--only GROUPS]
    rayfl reproduce incentive --ablation [--quick] [--seeds N]
    rayfl cluster check [PRESET_OR_YAML] [--address ADDR]
    rayfl presets
    rayfl plot RUN_DIR [--out DIR]

User errors (bad config, missing data, unwritable folder) print one line and exit with 2; no
traceback. An interrupt at any point prints one line and exits with 130 (Ctrl-C) or 143 (SIGTERM,
which stops a run like Ctrl-C: a checkpoint that matches the metrics, and the resume command).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayfl import interrupts
from rayfl.errors import RayflError

DEFAULT_PRESET = "akafl-rj"
EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    from rayfl import __version__

    p = argparse.ArgumentParser(prog="rayfl", description="Federated learning simulations on Ray.")
    p.add_argument("--version", action="version", version=f"rayfl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    _add_tune(sub)
    _add_reproduce(sub)

    cl = sub.add_parser("cluster", help="inspect the Ray cluster")
    cl.add_argument("action", choices=["check"], help="check: nodes, GPUs and worker placement")
    cl.add_argument("config", nargs="?", default="akafl-rj", help="preset name or YAML path")
    cl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cl.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or auto)")

    sub.add_parser("presets", help="list the shipped presets")

    ck = sub.add_parser("checkpoint", help="checkpoint files of a run folder")
    ck.add_argument(
        "action",
        choices=["convert"],
        help="convert: rewrite a trusted checkpoint.pkl of rayfl <= 0.1 as checkpoint.npz "
        "(loads the pickle: only for a file you trust)",
    )
    ck.add_argument("run_dir", help="the run folder")

    pl = sub.add_parser("plot", help="draw a run folder's figures (PNG)")
    pl.add_argument("run_dir", help="a folder written by `rayfl run`")
    pl.add_argument("--out", help="output folder (default: RUN_DIR/plots)")
    return p


def _add_overrides(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text
    )


def _add_run(sub: Any) -> None:
    r = sub.add_parser("run", help="run an experiment from a preset or a YAML file")
    r.add_argument(
        "config",
        nargs="?",
        default=None,
        help="preset name (see `rayfl presets`) or YAML path (default: akafl-rj)",
    )
    _add_overrides(r, "override a config field, e.g. --set aggregation.k=5 (repeatable)")
    r.add_argument("--output", "-o", help="run folder (default: runs/<name>-<timestamp>)")
    r.add_argument(
        "--address", help="Ray cluster address to connect to (default: start a local Ray)"
    )
    r.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    r.add_argument(
        "--py-module",
        dest="py_modules",
        action="append",
        default=[],
        metavar="PATH",
        help="a local package folder (or .py file) holding your own rules, selectors, tasks...: "
        "importable here and shipped to every node with Ray's runtime_env (repeatable)",
    )
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    r.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    r.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _add_tune(sub: Any) -> None:
    t = sub.add_parser("tune", help="search hyperparameters with Ray Tune (tune_configs/*.yaml)")
    t.add_argument("search", help="a search YAML, e.g. tune_configs/smoke.yaml")
    _add_overrides(t, "override a field of the base experiment (repeatable)")
    t.add_argument("--address", help="Ray cluster address to connect to")
    t.add_argument("--storage-path", help="where Tune writes (default: the YAML's storage_path)")
    t.add_argument("--resume", action="store_true", help="resume an interrupted search")


def _add_reproduce(sub: Any) -> None:
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
    rp.add_argument(
        "--paper-scale",
        action="store_true",
        help="akafl: the arms the paper has numbers for (AKAFL, AKAFL-R, AKAFL-RJ; the stale, "
        "K = 5 and straggler pairs) at T = 5000, 3 seeds",
    )
    rp.add_argument(
        "--results",
        metavar="DIR",
        help="akafl and incentive --ablation: the per-run results store; a run whose result is "
        "there for the same config is not run again (default: docs/results/akafl or "
        "docs/results/incentive_ablation under the current directory, the committed results "
        "when run in the repository's root; with --quick: OUTPUT/results)",
    )
    rp.add_argument(
        "--report-only",
        action="store_true",
        help="akafl: run nothing; rebuild table.md and the figures from the results store",
    )
    rp.add_argument(
        "--ablation",
        action="store_true",
        help="incentive: the mechanism's ablation (random, pow-d, bids only, + bargaining, "
        "+ additional selection, + carry-over) instead of experiments A and B",
    )
    rp.add_argument("--output", "-o", help="output folder (default: reproduce/<name>-<timestamp>)")
    rp.add_argument("--address", help="Ray cluster address to connect to")
    rp.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code.

    An interrupt at any point (start-up, the run, the figures) ends with one line on stderr and
    exit 130 (Ctrl-C) or 143 (SIGTERM, which stops a run exactly like Ctrl-C: rayfl.interrupts).
    """
    restore = interrupts.install()
    try:
        return _command(argv)
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as e:
        # Ray's own SIGTERM handler answers while ray.init runs (ensure_ray puts ours back after).
        if e.code == signal.SIGTERM and interrupts.displaced():
            return _interrupted(signum=signal.SIGTERM)
        raise
    finally:
        restore()


def _command(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        commands = {
            "run": _run,
            "tune": _tune,
            "reproduce": _reproduce,
            "cluster": _cluster,
            "presets": lambda _: _presets(),
            "plot": _plot,
            "checkpoint": _checkpoint,
        }
        if args.command not in commands:
            _parser().print_help()
            return EXIT_USER_ERROR
        return commands[args.command](args)
    except RayflError as e:
        print(f"rayfl: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


def _checkpoint(args: argparse.Namespace) -> int:
    from rayfl.runtime.checkpoint import convert_legacy

    print(
        f"wrote {convert_legacy(Path(args.run_dir))}: resume with rayfl run --resume {args.run_dir}"
    )
    return 0


def _interrupted(detail: str = "", signum: int | None = None) -> int:
    """Prints the one line of an interrupted command; its exit code (130 Ctrl-C, 143 SIGTERM)."""
    if signum is None:
        name, code = interrupts.signal_name(), interrupts.exit_code()
    else:
        name, code = signal.Signals(signum).name, 128 + signum
    # The newline ends the line that "^C" or the progress bar left on the terminal.
    print(f"\nrayfl: interrupted ({name}){detail}", file=sys.stderr)
    return code


def _run_interrupted(where: str, finished: bool) -> int:
    """The line for ``rayfl run``: how to resume, read from the summary.json the driver wrote."""
    if finished:  # the figures were being drawn (or pushed to the storage)
        return _interrupted(
            f" after the run finished; results in {where} (draw the figures with: rayfl plot "
            f"{where})"
        )
    summary = _read_summary(where)
    if summary is None:  # stopped before the driver wrote one: nothing ran
        return _interrupted(" before the run started")
    if "resume" in summary:
        return _interrupted(f"; resume with: {summary['resume']}")
    if summary.get("status") in ("finished", "stopped"):  # --resume of a finished run
        return _interrupted(f" before the run started; {where} is as it was")
    return _interrupted(f"; no checkpoint yet, the results so far are in {where}")


def _read_summary(where: str) -> dict[str, Any] | None:
    """summary.json of a run folder or storage URI; None if absent or unreadable."""
    import json

    try:
        if "://" not in where:
            return json.loads((Path(where) / "summary.json").read_text())
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(where.rstrip("/"))
        with fs.open_input_stream(f"{root}/summary.json") as f:
            return json.loads(f.read())
    except Exception:
        return None


def _run(args: argparse.Namespace) -> int:
    from rayfl.config import dump_config, load_config

    runtime_env = _py_modules(args.py_modules)
    if args.resume is not None:
        if args.config is not None or args.output is not None:
            raise RayflError(
                "--resume continues the run folder's own config: drop the config and --output "
                "arguments (use --set to change e.g. iterations)"
            )
        from rayfl.runtime.checkpoint import read_checkpoint
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
    from rayfl.api import run
    from rayfl.runtime.folder import default_run_dir

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
            runtime_env=runtime_env,
        )
    except KeyboardInterrupt:
        return _run_interrupted(run_dir, finished=False)
    where = result.summary.get("storage", str(result.run_dir))
    try:
        n_figures = 0 if args.no_plot else _draw_figures(result, where)
    except KeyboardInterrupt:
        return _run_interrupted(where, finished=True)
    print(format_summary(result.summary, where, n_figures))
    return 0


def _py_modules(paths: list[str]) -> dict[str, Any] | None:
    """``--py-module`` folders: importable in this process (the config names them and is checked
    here) and Ray's ``runtime_env`` ``py_modules`` for the server and the workers."""
    if not paths:
        return None
    modules = []
    for path in map(Path, paths):
        if not path.exists():
            raise RayflError(f"--py-module {path} does not exist: check the path")
        if not (path.is_dir() and (path / "__init__.py").is_file()) and path.suffix != ".py":
            raise RayflError(
                f"--py-module {path}: not a package folder (with __init__.py) or a .py file: "
                "pass the folder of your package"
            )
        sys.path.insert(0, str(path.resolve().parent))
        modules.append(str(path.resolve()))
    return {"py_modules": modules}


def _draw_figures(result: Any, where: str) -> int:
    """Draws a finished run's figures (and copies them to its storage URI); how many."""
    from rayfl.plots import plot_run

    figures = plot_run(result.run_dir)
    if result.config.tracking and figures:  # the trackers get the figures too
        from rayfl.tracking import add_files

        add_files(result.run_dir, result.config, figures, result.summary["status"])
    if "storage" in result.summary and figures:
        from rayfl.storage import push_dir

        push_dir(result.run_dir, where)
    return len(figures)


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
        return _interrupted("; resume with --resume")
    trials = outcome.trials
    cols = [c for c in trials.columns if c.startswith("config/")] + ["objective", "iteration"]
    top = trials.sort_values("objective", ascending=outcome.mode == "min").head(5)[cols]
    print()
    print(f"best trials (objective, {outcome.mode})")
    print(top.to_string(index=False))
    print(f"\nresults:     {outcome.path}")
    print(f"best config: {outcome.path / 'best_config.yaml'}  (rayfl run it unchanged)")
    if interrupts.received() is not None:  # Ray Tune stopped gracefully on SIGTERM, as on Ctrl-C
        return _interrupted("; resume with --resume")
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
    label = f"{args.name}{'-ablation' if args.ablation else ''}{'-quick' if args.quick else ''}"
    out = Path(args.output or f"reproduce/{label}-{stamp}")
    extra: dict[str, Any] = {}
    if args.only is not None:
        if args.name != "akafl":
            raise RayflError(f"--only is for `rayfl reproduce akafl`, not {args.name}: drop it")
        extra["only"] = [g.strip() for g in args.only.split(",") if g.strip()]
    extra.update(_akafl_store_options(args))
    if args.ablation:
        if args.name != "incentive":
            raise RayflError(f"--ablation is for `rayfl reproduce incentive`, not {args.name}")
        fn = get("incentive-ablation")
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
        return _interrupted(f"; the results so far are in {out}")
    print(Path(table).read_text())
    print(f"results: {out}")
    return 0


def _akafl_store_options(args: argparse.Namespace) -> dict[str, Any]:
    """``reproduce akafl``'s --paper-scale, --results and --report-only as keyword arguments."""
    given = {
        "paper_scale": args.paper_scale,
        "results": Path(args.results) if args.results is not None else None,
        "report_only": args.report_only,
    }
    given = {key: value for key, value in given.items() if value not in (None, False)}
    if args.ablation and set(given) == {"results"}:
        return given  # the ablation keeps its runs in a results store too
    if given and args.name != "akafl":
        flag = "--" + next(iter(given)).replace("_", "-")
        raise RayflError(f"{flag} is for `rayfl reproduce akafl`, not {args.name}: drop it")
    return given


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
