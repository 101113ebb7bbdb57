"""`scalekit fit DATA ...`: fit a scaling law to a CSV/JSONL file or a scalekit sweep directory.

Examples:
    scalekit fit runs.csv --law chinchilla --n-col params --c-col flops --loss-col loss --bootstrap 1000
    scalekit fit runs.csv --approach 2 --budgets chinchilla --json
    scalekit fit sweeps/demo --law chinchilla --holdout-above 1e18
    scalekit fit per_problem.csv --law coverage --group-col model
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

class CliError(Exception):
    """A usage or input problem: printed as one line, exit status 2."""


LAW_CHOICES = ("chinchilla", "kaplan", "kaplan_n", "kaplan_d", "kaplan_c", "data_constrained", "coverage",
               "posttrain")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scalekit fit", description="Fit a scaling law (approaches 1, 2 or 3 of "
                                "Chinchilla) to results in a CSV/JSONL file or a scalekit sweep directory.")
    p.add_argument("data", help="a .csv/.tsv/.jsonl/.json file, or a sweep directory")
    p.add_argument("--law", default="chinchilla", choices=LAW_CHOICES)
    p.add_argument("--approach", type=int, default=3, choices=(1, 2, 3),
                   help="3: parametric law (default); 2: IsoFLOP parabolas; 1: training-curve envelope")
    p.add_argument("--bootstrap", type=int, default=0, metavar="K", help="resamples for percentile intervals")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout-above", type=float, default=None, metavar="C",
                   help="fit on points with --holdout-col <= C, report the error on the rest")
    p.add_argument("--holdout-col", default=None, help="column the threshold applies to (default: C; k; X)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    g = p.add_argument_group("columns (default: common names, e.g. N/params, D/tokens, C/flops, loss)")
    for flag, canon in (("--n-col", "N"), ("--d-col", "D"), ("--c-col", "C"), ("--u-col", "U"), ("--x-col", "X"),
                        ("--k-col", "k"), ("--loss-col", "loss"), ("--run-col", "run"), ("--budget-col", "budget")):
        g.add_argument(flag, default=None, help=f"column holding {canon}")
    g.add_argument("--samples-col", default=None, help="coverage: per-problem number of samples n")
    g.add_argument("--correct-col", default=None, help="coverage: per-problem number of correct samples c")
    g.add_argument("--group-col", default=None, help="coverage: fit each group (e.g. model) separately")
    o = p.add_argument_group("fit options")
    o.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log residuals (default 1e-3)")
    o.add_argument("--grid", default="default", choices=("default", "coarse"),
                   help="starting grid: the law's default (Chinchilla's 4,500 starts) or every other value of it")
    o.add_argument("--kaplan-var", default="N", choices=("N", "D", "C"), help="variable of --law kaplan")
    o.add_argument("--no-irreducible", action="store_true", help="drop E from the single-variable power laws")
    o.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                   help="hold an LSE parameter fixed (repeatable), e.g. --fix alpha=0.34; "
                        "--fix published=datablations-base fixes a, b, e, alpha, beta to Muennighoff et al.'s base")
    o.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                   help="drop the K highest-loss points first (the Chinchilla replication drops 5)")
    o.add_argument("--drop-invalid", action="store_true",
                   help="drop rows with NaN/missing/non-positive values (with a warning) instead of failing")
    o.add_argument("--flops-per-param-token", type=float, default=6.0, help="C = k N D convention (default 6)")
    o.add_argument("--budgets", default=None,
                   help="approach 2: comma-separated budgets to snap C to, or 'chinchilla'")
    o.add_argument("--by", default="N", choices=("N", "D"), help="approach 2: parabola in log N or log D")
    o.add_argument("--at", type=float, action="append", default=[], metavar="C",
                   help="also report the compute-optimal allocation at this budget (repeatable)")
    return p


def _load_frame(path: Path, args):
    """(DataFrame, notes): a table file, or the 'done' runs of a sweep directory."""
    import pandas as pd

    from scalekit.laws.data import load_table

    if path.is_dir():
        try:
            from scalekit.sweep.store import load_sweep_frame
        except ImportError as err:
            raise CliError(f"{path} is a directory, but the sweep store is unavailable ({err})")
        df = load_sweep_frame(path)
        n_all = len(df)
        df = df[df["status"] == "done"].copy()
        notes = [f"sweep {path}: {len(df)} of {n_all} runs done"]
        defaults = {"N": "n_params", "D": "tokens", "loss": "eval_loss", "run": "key"}
        if "flops_6n" in df and df["flops_6n"].notna().all():
            defaults["C"] = "flops_6n"
            notes.append("C = flops_6n (6 N D) from the sweep store")
        else:
            defaults["C"] = "flops"
            notes.append("C = flops from the sweep store (its own FLOP convention)")
        if "budget" in df:
            defaults["budget"] = "budget"
        if args.approach == 1 and "eval_curve" in df:
            df, more = _expand_curves(df)
            notes += more
        return df, defaults, notes
    if not path.exists():
        raise CliError(f"no such file or directory: {path}")
    return load_table(path), {}, [f"file {path}"]


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


def _fixed(args, law) -> dict:
    out = {}
    for item in args.fix:
        if "=" not in item:
            raise CliError(f"--fix expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k == "published" and v == "datablations-base":
            from scalekit.laws.forms import DATABLATIONS_PUBLISHED
            out.update({n: DATABLATIONS_PUBLISHED[n] for n in ("a", "b", "e", "alpha", "beta")})
            continue
        out[k.strip()] = float(v)
    return out


def _law_name(args) -> str:
    if args.law == "kaplan":
        return f"kaplan_{args.kaplan_var.lower()}"
    return args.law


def _coverage(df, args, notes):
    from scalekit.laws.coverage import coverage_curve, coverage_data, fit_coverage, log_spaced_ks
    from scalekit.laws.extrapolate import extrapolation_check

    groups = [(None, df)] if args.group_col is None else list(df.groupby(args.group_col, sort=True))
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
        fit = fit_coverage(k, cov, delta=args.delta, bootstrap=args.bootstrap, seed=args.seed, level=args.level)
        fit.notes.insert(0, src)
        rep = None
        if args.holdout_above is not None:
            rep = extrapolation_check(coverage_data(k, cov), "coverage", args.holdout_above, column="k",
                                      delta=args.delta)
        out[str(name) if name is not None else "all"] = (fit, rep)
    return out


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from scalekit.laws import ScalingLawWarning

    caught: list[str] = []

    def _show(message, category, filename, lineno, file=None, line=None):
        caught.append(f"{category.__name__}: {message}")
        if not args.json:
            print(f"warning: {category.__name__}: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = _show
        warnings.simplefilter("always", ScalingLawWarning)
        return _run(args, caught)


def _run(args, caught: list[str]) -> int:
    from scalekit.laws import (CHINCHILLA_BUDGETS, ScalingData, extrapolation_check, fit_envelope, fit_isoflop,
                               fit_law)
    from scalekit.laws.errors import InvalidDataError

    try:
        df, defaults, notes = _load_frame(Path(args.data), args)
        law_name = _law_name(args)
        result: dict = {"data": str(args.data), "law": law_name, "approach": args.approach}
        if law_name == "coverage":
            fits = _coverage(df, args, notes)
            result["fits"] = {k: {**f.to_dict(), **({"extrapolation": r.to_dict()} if r else {})}
                              for k, (f, r) in fits.items()}
            text = [f"[{k}]\n{f.summary()}" + (f"\n{r.summary()}" if r else "") for k, (f, r) in fits.items()]
            return _emit(args, result, notes, text, caught)
        data = ScalingData.from_frame(df, _columns(args, defaults), drop_invalid=args.drop_invalid,
                                      flops_per_param_token=args.flops_per_param_token)
        data = data.drop_highest_loss(args.drop_highest_loss)
        text = []
        if args.approach in (1, 2):
            if law_name != "chinchilla":
                raise CliError("approaches 1 and 2 estimate compute-optimal N and D; "
                                 "use them with --law chinchilla (the default)")
            if args.approach == 2:
                budgets = None
                if args.budgets:
                    budgets = (CHINCHILLA_BUDGETS if args.budgets == "chinchilla"
                               else [float(b) for b in args.budgets.split(",")])
                fit = fit_isoflop(data, by=args.by, budgets=budgets, bootstrap=args.bootstrap, seed=args.seed,
                                  level=args.level, flops_per_param_token=args.flops_per_param_token)
            else:
                fit = fit_envelope(data, flops_per_param_token=args.flops_per_param_token)
        else:
            fit = fit_law(data, law_name, delta=args.delta, fixed=_fixed(args, law_name), grid=args.grid,
                          irreducible=not args.no_irreducible, bootstrap=args.bootstrap, seed=args.seed,
                          level=args.level)
        result.update(fit.to_dict())
        result["approach"] = args.approach
        text.append(fit.summary())
        if args.at:
            allocs = [fit.compute_optimal(c) for c in args.at]
            result["compute_optimal"] = [a.to_dict() for a in allocs]
            text.append("compute-optimal:\n" + "\n".join(f"  {a}" for a in allocs))
        if args.holdout_above is not None:
            if args.approach != 3:
                raise CliError("--holdout-above checks a parametric law (approach 3)")
            col = args.holdout_col or {"coverage": "k", "posttrain": "X"}.get(law_name, "C")
            rep = extrapolation_check(data, law_name, args.holdout_above, column=col, delta=args.delta,
                                      grid=args.grid, fixed=_fixed(args, law_name),
                                      irreducible=not args.no_irreducible)
            result["extrapolation"] = rep.to_dict()
            text.append(rep.summary())
        return _emit(args, result, notes, text, caught)
    except (CliError, InvalidDataError, ValueError, FileNotFoundError, KeyError) as err:
        msg = f"scalekit fit: error: {type(err).__name__}: {err}"
        if args.json:
            print(json.dumps({"error": str(err), "type": type(err).__name__}))
        else:
            print(msg, file=sys.stderr)
        return 2


def _emit(args, result: dict, notes: list[str], text: list[str], caught: list[str]) -> int:
    from scalekit.laws.render import jsonable

    result["conventions"] = notes
    result["warnings"] = caught
    if args.json:
        print(json.dumps(jsonable(result)))
    else:
        for n in notes:
            print(f"# {n}")
        print("\n\n".join(text))
    return 0
