"""Scaling-law fitting: laws, approaches 1-3 of Chinchilla, allocation, bootstrap intervals, extrapolation checks.

Works on results from any source (scalekit sweeps, or a CSV of runs from another framework): nothing here imports
the training code. Fits run in JAX, float64 scoped to the fitting calls, with every start (and every bootstrap
resample) of a fit in one jitted batched L-BFGS.

    from scalekit.laws import ScalingData, fit_law
    data = ScalingData.from_frame(df, {"N": "params", "C": "flops", "loss": "loss"})   # D = C / (6 N)
    fit = fit_law(data, "chinchilla", objective="lsq_log", bootstrap=1000)   # solver: vpnls (auto)
    fit.params, fit.intervals, fit.compute_optimal(1e23), print(fit.summary())
"""

from scalekit.laws.allocate import (Allocation, chinchilla_optimal, numeric_optimal, optimal_exponents,
                                    power_optimal)
from scalekit.laws.compare import LawComparison, compare_laws
from scalekit.laws.coverage import coverage_curve, fit_coverage, log_spaced_ks, pass_at_k
from scalekit.laws.data import ScalingData, load_table
from scalekit.laws.errors import (DroppedPointsWarning, InvalidDataError, NotConvergedWarning,
                                  ParabolaOpensDownwardWarning, ScalingLawWarning, TooFewPointsError,
                                  VertexOutsideRangeWarning)
from scalekit.laws.extrapolate import ExtrapolationReport, extrapolation_check
from scalekit.laws.diagnostics import Diagnostic, DiagnosticWarning, diagnose_isoflop, diagnose_law
from scalekit.laws.fit import SOLVERS, bootstrap_fit, fit_law
from scalekit.laws.forms import (CHINCHILLA_GRID_VALUES, DATABLATIONS_PUBLISHED, LAWS, Law, chinchilla_loss,
                                 data_constrained_loss, get_law)
from scalekit.laws.objective import DEFAULT_DELTA, OBJECTIVES
from scalekit.laws.isoflop import (CHINCHILLA_BUDGETS, AllocationFit, fit_envelope, fit_isoflop, group_budgets,
                                   isoflop_bias, training_envelope)
from scalekit.laws.lbfgs import STATUS, LBFGSOptions, minimize_batch
from scalekit.laws.lr_law import LrLawFit, LrOptimum, fit_lr_law, interpolate_lr_opt
from scalekit.laws.results import LawFit

__all__ = [
    "Allocation", "AllocationFit", "LawComparison", "compare_laws", "CHINCHILLA_BUDGETS", "CHINCHILLA_GRID_VALUES", "DATABLATIONS_PUBLISHED",
    "DEFAULT_DELTA", "Diagnostic", "DiagnosticWarning", "OBJECTIVES", "SOLVERS", "diagnose_isoflop",
    "diagnose_law", "DroppedPointsWarning", "ExtrapolationReport", "InvalidDataError", "LAWS", "LBFGSOptions",
    "Law", "LawFit", "LrLawFit", "LrOptimum", "NotConvergedWarning", "ParabolaOpensDownwardWarning", "STATUS", "ScalingData",
    "ScalingLawWarning", "TooFewPointsError", "VertexOutsideRangeWarning", "bootstrap_fit", "chinchilla_loss",
    "chinchilla_optimal", "coverage_curve", "data_constrained_loss", "extrapolation_check", "fit_coverage",
    "fit_envelope", "fit_isoflop", "fit_law", "fit_lr_law", "get_law", "group_budgets", "isoflop_bias", "load_table",
    "interpolate_lr_opt", "log_spaced_ks",
    "minimize_batch", "numeric_optimal", "optimal_exponents", "pass_at_k", "power_optimal", "training_envelope",
]
