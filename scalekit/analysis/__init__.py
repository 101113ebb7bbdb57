"""Analysis of scaling sweeps: load the runs, fit them every way, plot the curves, write the report.

    from scalekit.analysis import load_sweep, fit_sweep, write_report, plots
    results = load_sweep("runs/demo")            # finished runs + the data's known entropy floor
    fits = fit_sweep(results, bootstrap=200)     # approaches 1-3, extrapolation check, allocation at larger C
    fits                                          # in Jupyter: tables of parameters with intervals
    plots.plot_isoflop(results, fits.isoflop)     # every plot takes ax= and returns the figure
    write_report("runs/demo")                     # runs/demo/report/{report.html, fits.json, *.png}
"""

from scalekit.analysis.fits import SweepFits, fit_sweep, holdout_split
from scalekit.analysis.sweepdata import SweepResults, load_sweep, results_from_frame
from scalekit.analysis.synthetic import synthetic_coverage, synthetic_sweep

__all__ = ["SweepFits", "SweepResults", "fit_sweep", "holdout_split", "load_sweep", "results_from_frame",
           "synthetic_coverage", "synthetic_sweep", "write_report", "plots"]


def __getattr__(name: str):
    """`plots` and `write_report` import matplotlib: load them on first use."""
    if name == "plots":
        import importlib

        return importlib.import_module("scalekit.analysis.plots")
    if name in ("write_report", "render_html", "make_figures"):
        from scalekit.analysis import report

        return getattr(report, name)
    raise AttributeError(f"module 'scalekit.analysis' has no attribute {name!r}")
