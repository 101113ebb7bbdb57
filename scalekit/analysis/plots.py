"""The plots of a scaling study (matplotlib). Each takes an optional `ax` (or `axes` for two panels) to draw into
and returns the figure. Axes are log-log where the quantity spans decades; colours are colour-blind safe
(`scalekit.analysis.style`); a known entropy floor is drawn as a green dashed line.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from scalekit.analysis.fits import SweepFits
from scalekit.analysis.style import (APPROACH_LABEL, ROLE, get_axes, get_axes_pair, human, loglog, loss_axis, sci,
                                     value_colors)
from scalekit.analysis.sweepdata import SweepResults
from scalekit.laws import AllocationFit, LawFit, training_envelope


def _floor_line(ax, floor: float | None, label: str = "known loss floor") -> None:
    if floor is not None:
        ax.axhline(floor, color=ROLE["floor"], ls="--", lw=1.2, label=f"{label} {floor:.3f}")


def _colorbar(fig, ax, sm, label: str) -> None:
    cb = fig.colorbar(sm, ax=ax, pad=0.01)
    cb.set_label(label)


def _budget_groups(results: SweepResults) -> list[tuple[float, np.ndarray]]:
    """(budget, mask) per IsoFLOP budget: the planned budgets, else C clustered within 5%."""
    b = results.budgets
    if b is None:
        from scalekit.laws import group_budgets

        b = group_budgets(results.C)
    return [(float(u), b == u) for u in np.unique(b)]


def plot_isoflop(results: SweepResults, fit: AllocationFit | None = None, ax=None, floor: float | None = None):
    """IsoFLOP profiles: loss against N for each budget, the parabola in log N fitted to it, and its minimum."""
    fig, ax = get_axes(ax)
    groups = _budget_groups(results)
    colors, sm = value_colors([g[0] for g in groups])
    N, L = results.N, results.loss
    for (budget, m), col in zip(groups, colors):
        ax.plot(N[m], L[m], "o", color=col, ms=6, mec="white", mew=0.6, label=f"C = {sci(budget, 2)}")
        if m.sum() >= 3:
            x = np.log(N[m])
            p = np.polyfit(x - x.mean(), L[m], 2)
            if p[0] > 0:
                xs = np.linspace(x.min() - 0.25, x.max() + 0.25, 100)
                ax.plot(np.exp(xs), np.polyval(p, xs - x.mean()), "-", color=col, lw=1.4, alpha=0.9)
    if fit is not None:
        ax.plot(fit.n_opt, fit.loss_opt, "*", color=ROLE["approach2"], ms=13, mec="white", mew=0.8,
                label="parabola minima (N_opt)", zorder=5)
    _floor_line(ax, results.floor if floor is None else floor)
    loglog(ax)
    loss_axis(ax)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("eval loss (nats/token)")
    ax.set_title("IsoFLOP profiles")
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_loss_vs_compute(results: SweepResults, fits: SweepFits | None = None, ax=None, curves: bool = True):
    """Loss against compute for every run (its training curve and final point, coloured by N), the empirical
    frontier (lowest loss reached at each C) and approach 3's compute-optimal frontier, extrapolated."""
    fig, ax = get_axes(ax, (6.8, 4.4))
    colors, sm = value_colors(results.N)
    cur = results.curves() if curves else None
    if cur is not None and not cur.empty:
        order = {k: i for i, k in enumerate(results.frame["key"])}
        for run, g in cur.groupby("run", sort=False):
            ax.plot(g["C"], g["loss"], "-", color=colors[order[run]], lw=0.8, alpha=0.45)
    ax.scatter(results.C, results.loss, c=colors, s=32, edgecolors="white", linewidths=0.6, zorder=3)
    runs = cur["run"].to_numpy() if cur is not None and not cur.empty else np.arange(len(results))
    src = cur if cur is not None and not cur.empty else None
    Ce, Le, _ = training_envelope(runs, src["N"].to_numpy() if src is not None else results.N,
                                  src["C"].to_numpy() if src is not None else results.C,
                                  src["loss"].to_numpy() if src is not None else results.loss)
    ax.plot(Ce, Le, "-", color=ROLE["approach1"], lw=2, label="empirical frontier (lowest loss at C)")
    law = fits.law if fits is not None else None
    if law is not None:
        cmin = float(results.C.min())
        cmax = float(max(results.C.max(), *(fits.targets if len(fits.targets) else [0])))
        Cs = np.geomspace(cmin, cmax, 200)
        al = law.compute_optimal(Cs)
        ax.plot(Cs, al.loss, "--", color=ROLE["approach3"], lw=1.8, label="compute-optimal L(N_opt, D_opt), approach 3")
        if len(fits.targets):
            at = law.compute_optimal(fits.targets)
            ax.plot(fits.targets, at.loss, "D", color=ROLE["approach3"], ms=6, label="larger budgets (predicted)")
        if fits.law_floor is not None:
            ax.plot(Cs, fits.law_floor.compute_optimal(Cs).loss, "-.", color=ROLE["floor"], lw=1.6,
                    label="compute-optimal frontier, E fixed to the floor")
    _floor_line(ax, results.floor)
    loglog(ax)
    loss_axis(ax)
    ax.set_xlabel("compute C = 6ND (FLOPs)")
    ax.set_ylabel("eval loss (nats/token)")
    ax.set_title("Loss against compute")
    _colorbar(fig, ax, sm, "parameters N")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _band(ax, C: np.ndarray, fit, which: str, color: str) -> None:
    al = fit.compute_optimal(C)
    if which in al.intervals:
        lo, hi = al.intervals[which]
        ax.fill_between(C, lo, hi, color=color, alpha=0.18, lw=0)


def plot_optimal_allocation(fits: SweepFits, axes=None, bands: bool = True):
    """N_opt and D_opt against C: the per-budget optima (approach 2), each approach's fitted power law with its
    bootstrap band, extrapolated to the target budgets (dotted verticals)."""
    fig, (axn, axd) = get_axes_pair(axes)
    C = fits.results.C
    cmax = float(max(C.max(), *(fits.targets if len(fits.targets) else [0])))
    Cs = np.geomspace(float(C.min()) / 1.5, cmax * 1.5, 200)
    styles = {1: ":", 2: "-", 3: "--", 4: "-."}
    models = [(k, fits.approaches.get(k), APPROACH_LABEL[k], ROLE[f"approach{k}"]) for k in (1, 2, 3)]
    models.append((4, fits.law_floor, "approach 3, E fixed to the floor", ROLE["floor"]))
    for k, f, label, col in models:
        if f is None:
            continue
        al = f.compute_optimal(Cs)
        a, b = f.exponents["a"], f.exponents["b"]
        axn.plot(Cs, al.N_opt, styles[k], color=col, lw=1.8, label=f"{label}: a = {a:.3f}")
        axd.plot(Cs, al.D_opt, styles[k], color=col, lw=1.8, label=f"{label}: b = {b:.3f}")
        if bands and k in (2, 3):
            _band(axn, Cs, f, "N_opt", col)
            _band(axd, Cs, f, "D_opt", col)
    f2 = fits.approaches.get(2)
    if f2 is not None:
        axn.plot(f2.budgets, f2.n_opt, "o", color=ROLE["approach2"], mec="white", ms=7, label="IsoFLOP minima")
        axd.plot(f2.budgets, f2.d_opt, "o", color=ROLE["approach2"], mec="white", ms=7, label="IsoFLOP minima")
    for ax in (axn, axd):  # frame the fitted lines; a wild bootstrap tail must not squash them
        ys = np.concatenate([ln.get_ydata() for ln in ax.get_lines()])
        ys = ys[np.isfinite(ys) & (ys > 0)]
        if ys.size:
            ax.set_ylim(ys.min() / 4, ys.max() * 4)
    for ax, what in ((axn, "N_opt (parameters)"), (axd, "D_opt (tokens)")):
        ax.axvspan(float(C.max()), Cs[-1], color="0.92", zorder=0, label="extrapolation")
        for t in fits.targets:
            ax.axvline(t, color="0.5", ls=":", lw=0.9)
        loglog(ax)
        ax.set_xlabel("compute C = 6ND (FLOPs)")
        ax.set_ylabel(what)
        ax.legend(fontsize=7.5, loc="upper left")
    axn.set_title("Compute-optimal model size")
    axd.set_title("Compute-optimal tokens")
    return fig


def plot_loss_surface(fit: LawFit, results: SweepResults, ax=None, budgets: Sequence[float] | None = None):
    """The fitted L(N, D) as filled contours over log N x log D, the runs on it (coloured by their observed loss on
    the same scale), the IsoFLOP lines D = C / 6N of the budgets, and the compute-optimal path."""
    fig, ax = get_axes(ax, (6.6, 4.8))
    N, D = results.N, results.D
    n = np.geomspace(N.min() / 2, N.max() * 2, 160)
    d = np.geomspace(D.min() / 2, D.max() * 2, 160)
    NN, DD = np.meshgrid(n, d)
    Z = fit.predict(N=NN, D=DD)
    E = float(fit.params.get("E", 0.0))   # levels evenly spaced in log(L - E): resolution near the floor too
    lo = float(min(Z.min(), results.loss.min())) - E
    hi = float(np.quantile(Z, 0.97)) - E
    levels = E + np.geomspace(max(lo * 0.98, 1e-6), hi, 14)
    lo, hi = float(levels[0]), float(levels[-1])
    cs = ax.contourf(NN, DD, np.clip(Z, lo, hi), levels=levels, cmap="cividis_r", alpha=0.85)
    ax.contour(NN, DD, Z, levels=levels[::2], colors="white", linewidths=0.5, alpha=0.6)
    ax.scatter(N, D, c=results.loss, cmap="cividis_r", norm=cs.norm, s=46, edgecolors="black", linewidths=0.8,
               zorder=3, label="runs (colour: observed loss)")
    bs = budgets if budgets is not None else [g[0] for g in _budget_groups(results)]
    for i, c in enumerate(bs):
        ax.plot(n, c / (6 * n), ":", color="black", lw=0.9, label="IsoFLOP lines C = 6ND" if i == 0 else None)
    Cs = np.geomspace(6 * n[0] * d[0], 6 * n[-1] * d[-1], 200)
    al = fit.compute_optimal(Cs)
    ok = (al.N_opt >= n[0]) & (al.N_opt <= n[-1]) & (al.D_opt >= d[0]) & (al.D_opt <= d[-1])
    ax.plot(al.N_opt[ok], al.D_opt[ok], "-", color=ROLE["approach3"], lw=2, label="compute-optimal path")
    ax.set_xlim(n[0], n[-1])
    ax.set_ylim(d[0], d[-1])
    loglog(ax)
    ax.grid(False, which="both")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("tokens D")
    ax.set_title("Fitted L(N, D) = E + A/N^alpha + B/D^beta")
    fig.colorbar(cs, ax=ax, pad=0.01).set_label("loss (nats/token)")
    ax.legend(fontsize=7.5, loc="upper right")
    return fig


def plot_residuals(fit: LawFit, results: SweepResults, ax=None):
    """Log residuals (log observed - log predicted) of the fitted law against C, coloured by N."""
    fig, ax = get_axes(ax)
    res = np.log(results.loss) - np.log(fit.predict(N=results.N, D=results.D))
    colors, sm = value_colors(results.N)
    ax.scatter(results.C, res, c=colors, s=36, edgecolors="white", linewidths=0.6, zorder=3)
    ax.axhline(0.0, color="0.3", lw=1)
    rms = float(np.sqrt(np.mean(res ** 2)))
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("compute C = 6ND (FLOPs)")
    ax.set_ylabel("log L_observed - log L_fit")
    ax.set_title(f"Residuals of the approach-3 fit (RMS {rms:.2e})")
    _colorbar(fig, ax, sm, "parameters N")
    return fig


def plot_extrapolation(report, ax=None, pinned=None, floor: float | None = None):
    """Predicted against observed loss for the held-out runs of an extrapolation check; `pinned` adds the same
    check with E fixed to the known floor (drawn at `floor`)."""
    fig, ax = get_axes(ax, (5.2, 4.6))
    series = [(report, "D", ROLE["holdout"], f"law fitted on {report.n_fit} cheaper runs: "
                                             f"{report.mean_abs_rel_error:.2%} mean |error|")]
    if pinned is not None:
        series.append((pinned, "o", ROLE["floor"], f"same, E fixed to the floor: {pinned.mean_abs_rel_error:.2%}"))
    vals = [report.observed]
    for rep, marker, col, label in series:
        ax.plot(rep.observed, rep.predicted, marker, color=col, ms=7, mec="white", label=label)
        vals.append(rep.predicted)
    lo, hi = float(min(v.min() for v in vals)), float(max(v.max() for v in vals))
    pad = 0.05 * (hi - lo) + 1e-3
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "-", color="0.4", lw=1, label="perfect prediction")
    if floor is not None:
        ax.axhline(floor, color=ROLE["floor"], ls="--", lw=1, label=f"known loss floor {floor:.3f}")
    ax.set_xlabel(f"observed loss (held out: {report.column} > {sci(report.threshold, 2)})")
    ax.set_ylabel("predicted loss")
    ax.set_title("Extrapolation check")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    return fig


def plot_comparison(comparison, ax=None):
    """The law comparison's winner, fitted below the held-out budget, against the held-out runs: loss against N
    along each held-out budget with the winner's prediction band and the observed runs
    (`scalekit.laws.compare.LawComparison.plot`)."""
    fig, ax = get_axes(ax, (6.4, 4.4))
    comparison.plot(ax=ax)
    return fig


def plot_comparison_errors(comparison, ax=None):
    """Held-out mean |relative error| of every row of the law comparison (log scale), best first; failed fits are
    left out, approach-2 rows (error on the held-out budget's optimal loss) are hatched."""
    fig, ax = get_axes(ax, (6.4, 0.9 + 0.28 * max(len(comparison.rows), 1)))
    key = comparison.score_name
    rows = [r for r in comparison.rows if r["error"] is None and r[key] is not None]
    labels = [f"{r['form']} / {r['objective']}" for r in rows][::-1]
    vals = [r[key] for r in rows][::-1]
    win = comparison.winner
    colors = [ROLE["approach3"] if r["approach"] == 3 else ROLE["approach2"] for r in rows][::-1]
    bars = ax.barh(labels, vals, color=colors, alpha=0.85)
    for bar, r in zip(bars, rows[::-1]):
        if r["approach"] == 2:
            bar.set_hatch("//")
        if r is win:
            bar.set_edgecolor("black")
            bar.set_linewidth(1.5)
    ax.set_xscale("log")
    ax.grid(True, axis="x", which="both", alpha=0.25)
    ax.set_xlabel("held-out mean |relative error| of the loss" if key.startswith("heldout") else
                  "leave-one-budget-out mean |relative error|")
    ax.tick_params(axis="y", labelsize=7.5)
    ax.set_title("Law comparison (outlined: the winner; hatched: approach 2, error on L_opt)", fontsize=9)
    return fig


def plot_training_curves(results: SweepResults, ax=None, x: str = "D"):
    """Eval-loss curves of every run against tokens (x='D') or compute (x='C'), coloured by model size."""
    fig, ax = get_axes(ax, (6.6, 4.4))
    cur = results.curves()
    colors, sm = value_colors(results.N)
    order = {k: i for i, k in enumerate(results.frame["key"])}
    for run, g in cur.groupby("run", sort=False):
        ax.plot(g[x], g["loss"], "-", color=colors[order[run]], lw=1.1, alpha=0.85)
    xs = results.D if x == "D" else results.C
    ax.scatter(xs, results.loss, c=colors, s=20, zorder=3)
    _floor_line(ax, results.floor)
    loglog(ax)
    loss_axis(ax)
    ax.set_xlabel("tokens D" if x == "D" else "compute C = 6ND (FLOPs)")
    ax.set_ylabel("eval loss (nats/token)")
    ax.set_title("Training curves by model size")
    _colorbar(fig, ax, sm, "parameters N")
    if results.floor is not None:
        ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_lr_sweep(lr_law, axes=None):
    """Learning-rate grids (`scalekit.analysis.lrsweep.SweepLrLaw`): left, loss against lr for each (size, budget)
    cell, coloured by N, with its interpolated optimum starred (a cross where the best lr is at the edge of the
    grid); right, each cell's lr_opt against N with the fitted law lr_opt = c N^-k and its interval band."""
    fig, (axl, axr) = get_axes_pair(axes)
    t = lr_law.grid_cells()
    colors, sm = value_colors(t["n_params"].to_numpy(np.float64)) if len(t) else ([], None)
    edge_label = True
    for (_, row), col in zip(t.iterrows(), colors):
        x = np.asarray(row["lrs"], np.float64)
        y = np.asarray(row["losses"], np.float64)
        ok = np.isfinite(y)
        where = row["budget"] if row["budget"] == row["budget"] and row["budget"] is not None else None
        label = f"N = {human(row['n_params'])}" + (f", C = {sci(where, 2)}" if where is not None else "")
        axl.plot(x[ok], y[ok], "o-", color=col, ms=4.5, lw=1.1, mec="white", mew=0.5,
                 label=label if len(t) <= 8 else None)
        if row["at_edge"]:
            axl.plot(row["lr_opt"], row["loss_opt"], "X", color=ROLE["holdout"], ms=9, mec="black", mew=0.6,
                     zorder=5, label="best lr at the grid's edge (widen it)" if edge_label else None)
            edge_label = False
        else:
            axl.plot(row["lr_opt"], row["loss_opt"], "*", color=col, ms=13, mec="black", mew=0.6, zorder=5)
    axl.plot([], [], "*", color="0.6", ms=11, mec="black", mew=0.6, label="interpolated lr_opt")
    axl.set_xscale("log")
    axl.grid(True, which="both", alpha=0.25)
    axl.set_xlabel("learning rate")
    axl.set_ylabel("eval loss (nats/token)")
    axl.set_title("Loss against learning rate per size")
    axl.legend(fontsize=7.5, loc="best")
    if sm is not None:
        _colorbar(fig, axl, sm, "parameters N")
    if len(t):
        edge = t["at_edge"].astype(bool).to_numpy()
        N, lr = t["n_params"].to_numpy(np.float64), t["lr_opt"].to_numpy(np.float64)
        axr.plot(N[~edge], lr[~edge], "o", color=ROLE["data"], ms=6, mec="white", label="interpolated lr_opt")
        if edge.any():
            axr.plot(N[edge], lr[edge], "X", color=ROLE["holdout"], ms=8, mec="black", mew=0.6,
                     label="at the grid's edge")
    law = lr_law.law
    if law is not None:
        Ns = np.geomspace(law.N.min() / 1.5, law.N.max() * 1.5, 100)
        iv = law.intervals.get("k")
        axr.plot(Ns, law.predict(Ns), "-", color=ROLE["approach3"], lw=1.8,
                 label=f"lr_opt = {law.c:.3g} N^-{law.k:.3f}" + (f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else ""))
        lo, hi = law.predict_interval(Ns)
        if np.all(np.isfinite(lo)):
            axr.fill_between(Ns, lo, hi, color=ROLE["approach3"], alpha=0.18, lw=0,
                             label=f"{round(law.level * 100):g}% interval of the law")
    loglog(axr)
    axr.set_xlabel("parameters N")
    axr.set_ylabel("optimal learning rate")
    axr.set_title("Learning-rate law")
    axr.legend(fontsize=7.5, loc="best")
    return fig


def plot_coverage(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], fits: Mapping[str, LawFit] | None = None,
                  ax=None, log_y: bool = False):
    """Coverage (pass@k averaged over problems) against the number of samples k, one curve per label, with the
    fitted coverage law exp(a k^b) dashed. `log_y` plots -log coverage on a log axis (where the law is a line)."""
    fig, ax = get_axes(ax, (6.4, 4.4))
    labels = list(curves)
    keyvals = [i + 1 for i in range(len(labels))]
    colors, _ = value_colors(keyvals, log=False)
    for lab, col in zip(labels, colors):
        k, cov = (np.asarray(v, np.float64) for v in curves[lab])
        y = -np.log(np.clip(cov, 1e-300, None)) if log_y else cov
        ax.plot(k, y, "o", color=col, ms=3.5, label=lab)
        f = (fits or {}).get(lab)
        if f is not None:
            ks = np.geomspace(k.min(), k.max(), 200)
            fc = f.predict(k=ks)
            ax.plot(ks, -np.log(fc) if log_y else fc, "--", color=col, lw=1.2)
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
        ax.set_ylabel("-log coverage")
    else:
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("coverage (pass@k)")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_xlabel("samples per problem k")
    ax.set_title("Coverage against number of samples" + ("  (dashed: exp(a k^b))" if fits else ""))
    ax.legend(fontsize=7.5, loc="best")
    return fig


__all__ = ["plot_isoflop", "plot_loss_vs_compute", "plot_optimal_allocation", "plot_loss_surface",
           "plot_residuals", "plot_extrapolation", "plot_comparison", "plot_comparison_errors", "plot_training_curves",
           "plot_coverage", "plot_lr_sweep", "human"]
