"""`scalekit fit DATA ...`: fit a scaling law to a CSV/JSONL file or a scalekit sweep directory.

Examples:
    scalekit fit runs.csv --law chinchilla --n-col params --c-col flops --loss-col loss --bootstrap 1000
    scalekit fit runs.csv --objective lsq_log --tie alpha=beta --bound e=0:1 --json
    scalekit fit runs.csv --approach 2 --optimum parabola --budgets chinchilla --json
    scalekit fit sweeps/demo --law chinchilla --holdout-above 1e18 --floor 1.2
    scalekit fit runs.csv --compare --holdout both
    scalekit fit per_problem.csv --law coverage --group-col model

Every option is checked before any fitting work: a bad value exits with status 2 and one line
`scalekit fit: error: ...` that names the flag and the fix.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from scalekit.cli.fit_args import CliError, _check, _law_name, _parser


def _load_frame(path: Path, args):
    """(DataFrame, default columns, notes): a table file, or the 'done' runs of a sweep directory."""
    from scalekit.laws.data import load_table

    if args.store or path.is_dir():
        try:
            from scalekit.sweep.store import load_sweep_frame, redact_url
        except ImportError as err:
            raise CliError(f"{path} is a directory, but the sweep store is unavailable ({err})")
        full = load_sweep_frame(args.data or args.store, store=args.store or None)
        n_all = len(full)
        df = full[full["status"] == "done"].copy()
        where = f"{args.data} " if args.data else ""
        where += f"(store {redact_url(args.store)})" if args.store else ""
        notes = [f"sweep {where.strip()}: {len(df)} of {n_all} runs done" + _skipped(full)]
        defaults = {"N": "n_params", "D": "tokens", "loss": "eval_loss", "run": "key"}
        df, more = _lr_envelope(df, args.loss_col or "eval_loss")
        notes += more
        if "flops_6n" in df and df["flops_6n"].notna().all():
            defaults["C"] = "flops_6n"
            notes.append("C = flops_6n (6 N D) from the sweep store")
        else:
            defaults["C"] = "flops"
            notes.append("C = flops from the sweep store (its own FLOP convention)")
        if "budget" in df and args.budget_col is None:
            missing = int(df["budget"].isna().sum())
            if missing:                       # a grid sweep (no IsoFLOP plan): budgets are absent, not invalid
                df = df.drop(columns="budget")
                notes.append(f"budget missing for {missing} of {len(df)} runs: budget column not used "
                             "(approach 2 groups the runs by C)")
            else:
                defaults["budget"] = "budget"
        if args.approach == 1 and "eval_curve" in df:
            df, more = _expand_curves(df)
            notes += more
        return df, defaults, notes
    if not path.exists():
        raise CliError(f"no such file or directory: {path}")
    return load_table(path), {}, [f"file {path}"]


def _lr_envelope(df, loss_col: str):
    """(frame, notes): a sweep with several learning rates per (size, budget) cell keeps each cell's best lr (seeds
    averaged first; `scalekit.analysis.lrsweep.lr_envelope`); other sweeps come back unchanged."""
    import pandas as pd

    from scalekit.analysis.lrsweep import envelope_note, has_lr_grid, lr_envelope

    if loss_col not in df or "lr" not in df:
        return df, []
    had_loss = "loss" in df.columns
    tmp = df.rename(columns={"loss": "_loss_orig"}) if had_loss and loss_col != "loss" else df
    tmp = tmp.assign(loss=pd.to_numeric(tmp[loss_col], errors="coerce"))
    if not has_lr_grid(tmp):
        return df, []
    env, info = lr_envelope(tmp)
    env[loss_col] = env["loss"]
    if loss_col != "loss":
        env = env.drop(columns="loss")
        if had_loss:
            env = env.rename(columns={"_loss_orig": "loss"})
    return env, [envelope_note(info)]


def _skipped(frame) -> str:
    """"; skipped: 2 diverged, 1 failed" for the runs a fit leaves out (only done runs are fitted)."""
    counts = frame["status"].value_counts()
    parts = [f"{int(n)} {status}" for status, n in counts.items() if status != "done"]
    return f"; skipped: {', '.join(parts)}" if parts else ""


def _expand_curves(df):
    """One row per eval point of each run: C and D scale with step / steps (constant batch assumed)."""
    import pandas as pd

    rows = []
    for _, r in df.iterrows():
        curve = r.get("eval_curve")
        if not isinstance(curve, (list, tuple)) or len(curve) < 2:
            continue
        steps = r.get("steps") or max(s for s, _ in curve)
        for step, loss in curve:
            if step <= 0:
                continue
            frac = float(step) / float(steps)
            rows.append({"key": r["key"], "n_params": r["n_params"], "tokens": r["tokens"] * frac,
                         "flops_6n": (r["flops_6n"] if r["flops_6n"] == r["flops_6n"] else r["flops"]) * frac,
                         "flops": r["flops"] * frac, "eval_loss": loss})
    if not rows:
        return df, ["no eval curves: approach 1 uses final points (Pareto front)"]
    return pd.DataFrame(rows), [f"approach 1 on eval curves of {df['key'].nunique()} runs (C, D scale with step)"]


def _columns(args, defaults: dict) -> dict:
    cols = dict(defaults)
    for canon, val in (("N", args.n_col), ("D", args.d_col), ("C", args.c_col), ("U", args.u_col),
                       ("X", args.x_col), ("k", args.k_col), ("loss", args.loss_col), ("run", args.run_col),
                       ("budget", args.budget_col)):
        if val is not None:
            cols[canon] = val
    return cols


def _coverage(df, args, fit_kw):
    from scalekit.laws.coverage import coverage_curve, coverage_data, fit_coverage, log_spaced_ks
    from scalekit.laws.extrapolate import extrapolation_check

    groups = [(None, df)] if args.group_col is None else list(df.groupby(args.group_col, sort=True))
    kw = fit_kw
    out = {}
    for name, g in groups:
        if args.samples_col or args.correct_col or {"n_samples", "n_correct"} <= set(g.columns):
            n = g[args.samples_col or "n_samples"].to_numpy()
            c = g[args.correct_col or "n_correct"].to_numpy()
            ks = log_spaced_ks(int(n.min()))
            k, cov = ks, coverage_curve(n, c, ks)
            src = f"pass@k from {len(g)} problems (unbiased estimator), {len(ks)} values of k"
        else:
            k = g[args.k_col or "k"].to_numpy(np.float64)
            cov = g[args.loss_col or "coverage"].to_numpy(np.float64)
            src = f"coverage curve of {len(k)} points"
        fit = fit_coverage(k, cov, bootstrap=args.bootstrap, seed=args.seed, level=args.level, **kw)
        fit.notes.insert(0, src)
        rep = None
        if args.holdout_above is not None:
            rep = extrapolation_check(coverage_data(k, cov), "coverage", args.holdout_above, column="k", **kw)
        out[str(name) if name is not None else "all"] = (fit, rep)
    return out


def _persistent_compile_cache() -> None:
    """Every `scalekit fit` is a fresh process: keep its compiled fit programs in a persistent XLA cache (under
    $XDG_CACHE_HOME or ~/.cache, scalekit/xla) so that only the first fit on a machine pays for compilation.
    Skipped when JAX_COMPILATION_CACHE_DIR is already set, when SCALEKIT_NO_COMPILE_CACHE is set, when the directory
    cannot be written, or when JAX was imported already (its settings are read at import)."""
    if "jax" in sys.modules or "JAX_COMPILATION_CACHE_DIR" in os.environ or os.environ.get("SCALEKIT_NO_COMPILE_CACHE"):
        return
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scalekit" / "xla"
        base.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError, KeyError):        # no home directory, or an unwritable one: no cache
        return
    if os.access(base, os.W_OK):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(base)
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def main(argv: list[str]) -> int:
    _persistent_compile_cache()
    from scalekit.laws import ScalingLawWarning

    json_mode = "--json" in argv
    try:
        args = _parser().parse_args(argv)
    except CliError as err:
        return _error(json_mode, err)
    except SystemExit as ex:                     # --help
        return int(ex.code or 0)
    caught: list[str] = []

    def _show(message, category, filename, lineno, file=None, line=None):
        caught.append(f"{category.__name__}: {message}")
        if not args.json:
            print(f"warning: {category.__name__}: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = _show
        warnings.simplefilter("always", ScalingLawWarning)
        return _run(args, caught)


def _error(json_mode: bool, err: Exception) -> int:
    msg = str(err) if isinstance(err, CliError) else f"{type(err).__name__}: {err}"
    msg = " ".join(msg.split())                  # always one line
    if json_mode:
        print(json.dumps({"error": str(err), "type": type(err).__name__}))
    print(f"scalekit fit: error: {msg}", file=sys.stderr)
    return 2


def _run(args, caught: list[str]) -> int:
    from scalekit.laws import (CHINCHILLA_BUDGETS, ScalingData, extrapolation_check, fit_envelope, fit_isoflop,
                               fit_law)
    from scalekit.laws.errors import InvalidDataError

    try:
        fit_kw, cli_notes = _check(args)
        if not args.data and not args.store:
            raise CliError("give DATA (a table file or a sweep directory) or --store URL (a sweep's results store)")
        df, defaults, notes = _load_frame(Path(args.data), args)
        notes += cli_notes
        if fit_kw and args.floor is None and (args.store or Path(args.data).is_dir()):
            floor = _known_floor(args.data or args.store, args.store or None)
            if floor is not None:
                fit_kw["floor"] = floor
                notes.append(f"known loss floor {floor:.4f} nats/token (the sweep's synthetic language) used by "
                             "the diagnostics; --floor overrides it")
        law_name = _law_name(args)
        result: dict = {"data": str(args.data) if args.data else _redacted(args.store), "law": law_name,
                        "approach": args.approach}
        if law_name == "coverage":
            fits = _coverage(df, args, fit_kw)
            result["fits"] = {k: {**f.to_dict(), **({"extrapolation": r.to_dict()} if r else {})}
                              for k, (f, r) in fits.items()}
            text = [f"[{k}]\n{f.summary()}" + (f"\n{r.summary()}" if r else "") for k, (f, r) in fits.items()]
            return _emit(args, result, notes, text, caught)
        data = ScalingData.from_frame(df, _columns(args, defaults), drop_invalid=args.drop_invalid,
                                      flops_per_param_token=args.flops_per_param_token)
        if args.drop_highest_loss >= len(data):
            raise CliError(f"--drop-highest-loss {args.drop_highest_loss} would drop all {len(data)} rows: "
                           f"use a value below {len(data)}")
        data = data.drop_highest_loss(args.drop_highest_loss)
        text = []
        if args.approach == 2:
            budgets = CHINCHILLA_BUDGETS if args.budgets == "chinchilla" else args.budgets
            extra = {k: v for k, v in (("optimum", args.optimum), ("window", args.window)) if v is not None}
            fit = fit_isoflop(data, by=args.by, budgets=budgets, bootstrap=args.bootstrap, seed=args.seed,
                              level=args.level, flops_per_param_token=args.flops_per_param_token, **extra)
            from scalekit.laws.diagnostics import attach_isoflop_diagnostics

            attach_isoflop_diagnostics(fit, data)
        elif args.approach == 1:
            fit = fit_envelope(data, flops_per_param_token=args.flops_per_param_token)
        else:
            fit = fit_law(data, law_name, bootstrap=args.bootstrap, seed=args.seed, level=args.level, **fit_kw)
        result.update(fit.to_dict())
        result["approach"] = args.approach
        result.setdefault("diagnostics", [g.to_dict() for g in getattr(fit, "diagnostics", None) or []])
        if args.approach == 2:
            det = getattr(fit, "details", {}) or {}
            result["optimum"] = det.get("optimum", args.optimum)
            result["window"] = det.get("window", args.window) if result["optimum"] == "robust" else None
            text.append(f"approach 2: optimum {result['optimum']}"
                        + (f", window {result['window']}" if result["window"] is not None else ""))
        text.append(fit.summary())
        if args.at:
            allocs = [fit.compute_optimal(c) for c in args.at]
            result["compute_optimal"] = [a.to_dict() for a in allocs]
            text.append("compute-optimal:\n" + "\n".join(f"  {a}" for a in allocs))
        if args.holdout_above is not None:
            col = args.holdout_col or {"coverage": "k", "posttrain": "X"}.get(law_name, "C")
            rep = extrapolation_check(data, law_name, args.holdout_above, column=col, **fit_kw)
            result["extrapolation"] = rep.to_dict()
            text.append(rep.summary())
        if args.compare:
            cmp = _compare(data, args, fit_kw.get("floor", args.floor))
            result["compare"] = cmp.to_dict()
            text.append(cmp.summary())
        return _emit(args, result, notes, text, caught)
    except (CliError, InvalidDataError, ValueError, FileNotFoundError, KeyError) as err:
        return _error(args.json, err)


def _redacted(url: str) -> str:
    from scalekit.sweep.store import redact_url

    return redact_url(url)


def _known_floor(sweep_dir: str | Path, store: str | None = None) -> float | None:
    """The loss floor a sweep's data source knows (synthetic languages), or None."""
    try:
        from scalekit.analysis.sweepdata import load_sweep

        return load_sweep(sweep_dir, store=store).floor
    except (ImportError, ValueError, OSError):
        return None


def _compare(data, args, floor):
    try:
        from scalekit.laws.compare import compare_laws
    except ImportError as err:
        raise CliError(f"--compare needs scalekit.laws.compare, which this installation lacks ({err})") from None
    return compare_laws(data, holdout=args.holdout or "top", bootstrap=args.bootstrap, level=args.level,
                        seed=args.seed, floor=floor)


def _emit(args, result: dict, notes: list[str], text: list[str], caught: list[str]) -> int:
    from scalekit.laws.render import jsonable

    result["conventions"] = notes
    result["warnings"] = caught
    if args.json:
        print(json.dumps(jsonable(result)))
    else:
        for n in notes:
            print(f"# {n}")
        print("\n\n".join(t for t in text if t))
    return 0
