"""Arguments of `scalekit fit`: the parser, value types that check ranges, and the cross-flag checks.

Every option is checked here before any data is read or fitted; a problem raises CliError, which `scalekit fit`
prints as one line naming the flag and the fix (exit status 2).
"""

from __future__ import annotations

import argparse
import math


class CliError(Exception):
    """A usage or input problem: printed as one line, exit status 2."""


LAW_CHOICES = ("chinchilla", "chinchilla_tied", "kaplan", "kaplan_n", "kaplan_d", "kaplan_c", "kaplan_nd", "gadre",
               "data_constrained", "coverage", "posttrain")
OBJECTIVES = ("huber_log", "lsq_log", "lsq", "huber")
HUBER_OBJECTIVES = ("huber_log", "huber")
SOLVERS = ("auto", "lbfgs", "vpnls")
OPTIMA = ("robust", "parabola", "akima")
HOLDOUTS = ("top", "lobo", "both")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised as CliError) rather than usage text and SystemExit."""

    def error(self, message):
        raise CliError(f"{message} (see scalekit fit --help)")


# ---------------------------------------------------------------------------------- argparse value checks
def _number(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    return v


def _positive_float(s: str) -> float:
    v = _number(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s!r}")
    return v


def _level(s: str) -> float:
    v = _number(s)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1 (e.g. 0.95), got {s!r}")
    return v


def _int_at_least(lo: int, hint: str = ""):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}{hint}, got {s!r}")
        return v
    parse.__name__ = "int"
    return parse


def _fix_item(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expects NAME=VALUE (e.g. alpha=0.34), got {s!r}")
    k, v = (t.strip() for t in s.split("=", 1))
    if (k, v) == ("published", "datablations-base"):
        return k, v
    if not k:
        raise argparse.ArgumentTypeError(f"expects NAME=VALUE (e.g. alpha=0.34), got {s!r}")
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"value of {k!r} is not a number: {v!r} (e.g. alpha=0.34)") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"value of {k!r} must be finite, got {v!r}")
    return k, x


def _tie_item(s: str) -> tuple[str, str]:
    parts = [t.strip() for t in s.split("=")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expects A=B (e.g. beta=alpha: beta is set equal to alpha), got {s!r}")
    if parts[0] == parts[1]:
        raise argparse.ArgumentTypeError(f"ties a parameter to itself: {s!r}")
    return parts[0], parts[1]


def _bound_item(s: str) -> tuple[str, tuple[float | None, float | None]]:
    if "=" not in s or ":" not in s.split("=", 1)[1]:
        raise argparse.ArgumentTypeError(f"expects NAME=LO:HI, either side may be empty (e.g. alpha=0:1, "
                                         f"alpha=0:), got {s!r}")
    k, rng = (t.strip() for t in s.split("=", 1))
    lo_s, hi_s = (t.strip() for t in rng.split(":", 1))
    if not k or (not lo_s and not hi_s):
        raise argparse.ArgumentTypeError(f"expects NAME=LO:HI with at least one side given, got {s!r}")
    ends = []
    for t in (lo_s, hi_s):
        if not t:
            ends.append(None)
            continue
        try:
            ends.append(float(t))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bound {t!r} of {k!r} is not a number (in {s!r})") from None
        if math.isnan(ends[-1]):
            raise argparse.ArgumentTypeError(f"bound of {k!r} is NaN (in {s!r})")
    lo, hi = ends
    if lo is not None and hi is not None and not lo < hi:
        raise argparse.ArgumentTypeError(f"lower bound must be below the upper one, got {s!r}")
    return k, (lo, hi)


def _budgets(s: str):
    if s.strip().lower() == "chinchilla":
        return "chinchilla"
    out = []
    for t in s.split(","):
        try:
            v = float(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects comma-separated FLOP budgets (e.g. 1e19,1e20) or "
                                             f"'chinchilla'; {t.strip()!r} is not a number") from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"budgets must be finite and > 0, got {t.strip()!r}")
        out.append(v)
    return out


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scalekit fit", description="Fit a scaling law (approaches 1, 2 or 3 of "
                "Chinchilla) to results in a CSV/JSONL file or a scalekit sweep directory.")
    p.add_argument("data", nargs="?", default="", help="a .csv/.tsv/.jsonl/.json file, or a sweep directory")
    p.add_argument("--store", default="", metavar="URL", help="a sweep's results store, when not DATA/results.db: "
                   "postgresql://user@host:port/db?sweep=NAME (printed with its password as ***)")
    p.add_argument("--law", default="chinchilla", choices=LAW_CHOICES)
    p.add_argument("--approach", type=int, default=3, choices=(1, 2, 3),
                   help="3: parametric law (default); 2: IsoFLOP parabolas; 1: training-curve envelope")
    p.add_argument("--bootstrap", type=_int_at_least(0, " (0 = no bootstrap)"), default=0, metavar="K",
                   help="resamples for percentile intervals (default 0 = off)")
    p.add_argument("--level", type=_level, default=0.95, help="interval level, in (0, 1) (default 0.95)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed of the bootstrap, >= 0")
    p.add_argument("--holdout-above", type=_positive_float, default=None, metavar="C",
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
    o = p.add_argument_group("fit options (approach 3)")
    o.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="huber_log (default: Huber on log residuals, as Chinchilla), lsq_log (least squares on log "
                        "loss), lsq (least squares on loss), huber (Huber on loss residuals)")
    o.add_argument("--delta", type=_positive_float, default=None,
                   help="Huber delta, > 0 (default 1e-3); ignored, with a note, by the lsq objectives")
    o.add_argument("--solver", default=None, choices=SOLVERS,
                   help="auto (default: variable projection where the law is separable, else L-BFGS), lbfgs, vpnls")
    o.add_argument("--grid", default=None, choices=("default", "coarse"),
                   help="L-BFGS starting grid: the law's default (Chinchilla's 4,500 starts) or every other value "
                        "of it; giving one selects the lbfgs solver under --solver auto")
    o.add_argument("--kaplan-var", default="N", choices=("N", "D", "C"), help="variable of --law kaplan")
    o.add_argument("--no-irreducible", action="store_true", help="drop E from the single-variable power laws")
    o.add_argument("--fix", type=_fix_item, action="append", default=[], metavar="NAME=VALUE",
                   help="hold a fitted (LSE) parameter fixed (repeatable), e.g. --fix alpha=0.34 or --fix e=0.6 "
                        "(e = log E); --fix published=datablations-base fixes a, b, e, alpha, beta to Muennighoff "
                        "et al.'s base")
    o.add_argument("--tie", type=_tie_item, action="append", default=[], metavar="A=B",
                   help="set parameter A equal to B (repeatable), e.g. --tie beta=alpha (as the library's "
                        "tie='beta=alpha': beta follows alpha)")
    o.add_argument("--bound", type=_bound_item, action="append", default=[], metavar="NAME=LO:HI",
                   help="bound a fitted (LSE) parameter (repeatable); either side may be empty: alpha=0:, alpha=:2")
    o.add_argument("--floor", type=_positive_float, default=None, metavar="L",
                   help="a known lower bound on the loss (e.g. a synthetic language's entropy): diagnostics flag "
                        "an E fitted below it")
    o.add_argument("--drop-highest-loss", type=_int_at_least(0), default=0, metavar="K",
                   help="drop the K highest-loss points first (the Chinchilla replication drops 5)")
    o.add_argument("--drop-invalid", action="store_true",
                   help="drop rows with NaN/missing/non-positive values (with a warning) instead of failing")
    o.add_argument("--flops-per-param-token", type=_positive_float, default=6.0,
                   help="C = k N D convention, > 0 (default 6)")
    o.add_argument("--at", type=_positive_float, action="append", default=[], metavar="C",
                   help="also report the compute-optimal allocation at this budget, > 0 (repeatable)")
    a2 = p.add_argument_group("approach 2 options")
    a2.add_argument("--budgets", type=_budgets, default=None,
                    help="comma-separated budgets to snap C to, or 'chinchilla'")
    a2.add_argument("--by", default="N", choices=("N", "D"), help="parabola in log N or log D")
    a2.add_argument("--optimum", default=None, choices=OPTIMA,
                    help="how each budget's optimum is found (default: the library's, robust); parabola = the "
                         "vertex of one least-squares parabola over the budget's points")
    a2.add_argument("--window", type=_int_at_least(3), default=None, metavar="K",
                    help="points around each budget's minimum used for its optimum, >= 3")
    c = p.add_argument_group("comparison")
    c.add_argument("--compare", action="store_true",
                   help="also compare laws, objectives and approaches on held-out points, ranked")
    c.add_argument("--holdout", default=None, choices=HOLDOUTS,
                   help="--compare holdout: top (highest budgets, default), lobo (leave one budget out), both")
    return p


def _law_name(args) -> str:
    if args.law == "kaplan":
        return f"kaplan_{args.kaplan_var.lower()}"
    return args.law


def _known(flag: str, item: str, name: str, law) -> None:
    """Raise unless `name` is a fitted parameter of `law`; the message lists the law's parameters."""
    if name in law.params:
        return
    hint = ""
    if name.lower() in law.params:
        hint = f" (the fit is in log form: use {name.lower()}" + (f" = log {name})" if name != name.lower() else ")")
    raise CliError(f"{flag} {item}: the {law.name} law has no parameter {name!r}; its parameters are "
                   f"{', '.join(law.params)}{hint}")


def _check(args) -> tuple[dict, list[str]]:
    """Every option checked before any data is read or fitted: (keyword arguments of the fit, notes)."""
    from scalekit.laws import get_law

    law_name = _law_name(args)
    notes: list[str] = []
    parametric = args.approach == 3 or law_name == "coverage"
    if args.approach in (1, 2) and law_name != "chinchilla":
        raise CliError(f"--approach {args.approach} estimates compute-optimal N and D from IsoFLOP data: use it "
                       "with --law chinchilla (the default), or --approach 3 for other laws")
    if not parametric:
        for flag, given in (("--fix", args.fix), ("--tie", args.tie), ("--bound", args.bound),
                            ("--floor", args.floor is not None), ("--holdout-above", args.holdout_above is not None)):
            if given:
                raise CliError(f"{flag} applies to a parametric fit: use --approach 3, or drop {flag}")
        for flag, given in (("--objective", args.objective), ("--solver", args.solver), ("--delta", args.delta),
                            ("--grid", args.grid)):
            if given is not None:
                notes.append(f"{flag} is ignored by approach {args.approach} (it fits no parametric law)")
    if args.approach != 2:
        for flag, given in (("--optimum", args.optimum), ("--window", args.window)):
            if given is not None:
                raise CliError(f"{flag} applies to approach 2 (IsoFLOP profiles): add --approach 2, or drop {flag}")
        if args.budgets is not None:
            notes.append("--budgets is ignored outside approach 2")
    elif args.window is not None and args.optimum in ("parabola", "akima"):
        notes.append(f"--window is ignored by --optimum {args.optimum} (it uses all of a budget's points)")
    if args.holdout is not None and not args.compare:
        notes.append("--holdout is ignored without --compare")
    if args.compare and law_name == "coverage":
        raise CliError("--compare compares laws of loss in N and D: it does not apply to --law coverage")
    objective = args.objective or "huber_log"
    if args.delta is not None and objective not in HUBER_OBJECTIVES and parametric:
        notes.append(f"--delta {args.delta:g} is ignored: the {objective} objective has no Huber threshold")
    if not parametric:
        return {}, notes
    if args.grid is not None and args.solver == "vpnls":
        notes.append("--grid is ignored by --solver vpnls (it searches its own grid over the exponents)")
    try:
        law = get_law(law_name, irreducible=not args.no_irreducible)
    except ValueError as err:
        raise CliError(f"{'--no-irreducible' if args.no_irreducible else '--law'}: {err}") from None
    if law_name == "coverage" and args.floor is not None:
        raise CliError("--floor bounds a loss from below: it does not apply to --law coverage; drop --floor")
    fixed: dict[str, float] = {}
    for k, v in args.fix:
        if k == "published":
            from scalekit.laws.forms import DATABLATIONS_PUBLISHED
            for n in ("a", "b", "e", "alpha", "beta"):
                _known("--fix", "published=datablations-base", n, law)
                fixed[n] = DATABLATIONS_PUBLISHED[n]
            continue
        _known("--fix", f"{k}={v:g}", k, law)
        fixed[k] = v
    tie: dict[str, str] = {}
    for a, b in args.tie:
        for n in (a, b):
            _known("--tie", f"{a}={b}", n, law)
        if a in tie:
            raise CliError(f"--tie {a}={b}: {a} is already tied to {tie[a]}; tie each parameter once")
        tie[a] = b                                 # --tie beta=alpha: beta is set equal to alpha
    bounds: dict[str, tuple] = {}
    for k, (lo, hi) in args.bound:
        _known("--bound", f"{k}={'' if lo is None else f'{lo:g}'}:{'' if hi is None else f'{hi:g}'}", k, law)
        bounds[k] = (lo, hi)
    kw: dict = {"objective": objective, "solver": args.solver or "auto", "fixed": fixed}
    if law_name != "coverage":
        kw["irreducible"] = not args.no_irreducible
        if args.grid is not None:
            kw["grid"] = args.grid
    if objective in HUBER_OBJECTIVES and args.delta is not None:
        kw["delta"] = args.delta
    if tie:
        kw["tie"] = tie
    if bounds:
        kw["bounds"] = bounds
    if args.floor is not None:
        kw["floor"] = args.floor
    return kw, notes
