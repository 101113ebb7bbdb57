"""`write_report`: a self-contained HTML report of a sweep (plots embedded as base64 PNGs), the PNGs, and fits.json.

The report says what was run, the fitted laws with intervals under each approach, how far the approaches agree, the
fitted E against the data's known floor, the extrapolation check (fit the cheaper runs, predict the largest budget),
the law comparison (every form x objective x approach ranked by its error on the held-out top budget) and the
compute-optimal model and token count at 10x, 100x and 1000x the largest budget (from the comparison's winner, and
under each approach). A sweep with learning-rate grids adds a section on the learning rate per model size: each
cell's grid, best and interpolated optimal lr (flagged where the best lr is at the grid's edge), and the fitted law
lr_opt(N) = c N^-k with its interval; sweeps without grids omit it.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from scalekit.analysis import plots
from scalekit.analysis.fits import FLOOR_LABEL, SweepFits, fit_sweep
from scalekit.analysis.style import APPROACH_LABEL, human, png_bytes
from scalekit.analysis.sweepdata import CONVENTIONS, SweepResults, load_sweep
from scalekit.laws.render import fmt

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.fig{margin:1em 0}.fig img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:.9em}
.ok{color:#006d4e;font-weight:600}.bad{color:#b3450b;font-weight:600}code{background:#f5f5f5;padding:0 .2em}"""

FIGURES = (("isoflop", "IsoFLOP profiles with their fitted parabolas; stars mark the minima (approach 2)."),
           ("loss_vs_compute", "Every run's training curve and final loss against compute, the empirical frontier "
                               "and approach 3's compute-optimal frontier extended to larger budgets."),
           ("optimal_allocation", "Compute-optimal N and D against C: fitted power laws with bootstrap bands, "
                                  "extrapolated (grey) to the target budgets (dotted)."),
           ("loss_surface", "The fitted L(N, D) as contours with the runs on it."),
           ("residuals", "Residuals of the approach-3 fit."),
           ("extrapolation", "The extrapolation check: the law fitted on the cheaper runs predicts the held-out ones."),
           ("comparison", "The law comparison's winner, fitted on every budget but the largest, against the runs of "
                          "the largest (held out), with its prediction band."),
           ("comparison_errors", "Held-out error of every law x objective x approach of the comparison."),
           ("training_curves", "Training (eval-loss) curves coloured by model size."),
           ("lr_sweep", "Loss against learning rate for each (size, budget) cell with its interpolated optimum "
                        "(stars; crosses where the best lr is at the edge of the grid), and the optimal learning "
                        "rate against N with the fitted law lr_opt = c N^-k and its interval."))


@dataclass
class Report:
    """What `write_report` wrote: the HTML file, fits.json, the PNGs (by figure name) and the fits themselves."""

    html: Path
    json: Path
    pngs: dict[str, Path] = field(default_factory=dict)
    fits: SweepFits | None = None


def make_figures(fits: SweepFits) -> dict[str, "plt.Figure"]:
    """Every figure the report shows that the fits allow (missing approaches leave their figures out)."""
    r = fits.results
    figs = {"isoflop": plots.plot_isoflop(r, fits.isoflop),
            "loss_vs_compute": plots.plot_loss_vs_compute(r, fits)}
    if fits.approaches:
        figs["optimal_allocation"] = plots.plot_optimal_allocation(fits)
    if fits.law is not None:
        figs["loss_surface"] = plots.plot_loss_surface(fits.law, r)
        figs["residuals"] = plots.plot_residuals(fits.law, r)
    if fits.extrapolation is not None:
        figs["extrapolation"] = plots.plot_extrapolation(fits.extrapolation, pinned=fits.extrapolation_floor,
                                                         floor=r.floor)
    c = fits.comparison
    if c is not None and c.winner is not None:
        figs["comparison"] = plots.plot_comparison(c)
        figs["comparison_errors"] = plots.plot_comparison_errors(c)
    if not r.curves().empty:
        figs["training_curves"] = plots.plot_training_curves(r)
    if fits.lr_law is not None and len(fits.lr_law.grid_cells()):
        figs["lr_sweep"] = plots.plot_lr_sweep(fits.lr_law)
    return figs


def _table(header, rows) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _label(k) -> str:
    """The long name of an approach key: 1, 2, 3 or FLOOR_LABEL."""
    if str(k) == FLOOR_LABEL:
        return "approach 3 with E fixed to the known floor"
    return APPROACH_LABEL[int(k)]


def _law_rows(f) -> list[tuple[str, str, str]]:
    rows = [(n, fmt(v), _iv(f.intervals.get(n))) for n, v in f.params.items()]
    return rows + [(f"exponent {n}", fmt(v), _iv(f.intervals.get(f"exponent_{n}"))) for n, v in f.exponents.items()]


def _int(v) -> str:
    try:
        return str(int(v)) if v is not None and v == v else ""
    except (TypeError, ValueError):
        return ""


def _iv(iv) -> str:
    return f"[{fmt(iv[0])}, {fmt(iv[1])}]" if iv is not None else ""


def _runs_section(r: SweepResults) -> str:
    df = r.frame.sort_values(["budget" if r.budgets is not None else "C", "n_params"])
    rows = [(row["name"], human(row["n_params"]), human(row["tokens"]), fmt(row["C"]),
             _int(row.get("steps")),
             f"{row['tokens'] / row['n_params']:.1f}", f"{row['loss']:.4f}",
             f"{row['wall_time_s']:.1f}" if row.get("wall_time_s") == row.get("wall_time_s") else "")
            for _, row in df.iterrows()]
    wall = float(np.nansum(r.frame.get("wall_time_s", np.nan)))
    budgets = sorted(set(r.budgets)) if r.budgets is not None else []
    lines = [f"<p>{len(r)} finished runs (of {r.n_total} in the sweep; {r.n_failed} failed) from "
             f"<code>{html.escape(r.source)}</code>; {len(np.unique(r.N))} model sizes from {human(r.N.min())} to "
             f"{human(r.N.max())} parameters"
             + (f", {len(budgets)} IsoFLOP budgets: " + ", ".join(fmt(b) for b in budgets) if budgets else "")
             + f"; {fmt(r.C.sum())} FLOPs (6ND) in all, {wall:.0f} s of training.</p>"]
    if r.data_description:
        lines.append(f"<p class=note>Data: {html.escape(r.data_description)}</p>")
    lines.append("<p class=note>Conventions: " + "; ".join(map(html.escape, CONVENTIONS)) + ".</p>")
    lines.append(_table(("run", "N", "D", "C (6ND)", "steps", "D/N", "eval loss", "wall s"), rows))
    return "\n".join(lines)


def _approach_section(fits: SweepFits) -> str:
    out = []
    lvl = f"{int(round(fits.level * 100))}% interval"
    for k in (3, 2, 1):
        out.append(f"<h3>{html.escape(APPROACH_LABEL[k])}</h3>")
        if k not in fits.approaches:
            out.append(f"<p class=bad>not fitted: {html.escape(fits.errors.get(str(k), 'no result'))}</p>")
            continue
        f = fits.approaches[k]
        if k == 3:
            rows = _law_rows(f)
            out.append(f"<p>{html.escape(f.law.formula)}; {f.n_points} runs, Huber delta {f.delta:g}, "
                       f"{f.n_converged}/{f.n_starts} starts converged"
                       + (f", {f.bootstrap_converged[0]}/{f.bootstrap_converged[1]} bootstrap refits converged"
                          if f.bootstrap_converged else "") + ".</p>")
        else:
            rows = [(n, fmt(v), _iv(f.intervals.get(n))) for n, v in f.params.items()]
            boot = next((n for n in reversed(f.notes) if n.startswith("bootstrap")), "")
            out.append(f"<p>N_opt = k_N C^a, D_opt = k_D C^b, from {len(f.budgets)} "
                       f"{'IsoFLOP minima' if k == 2 else 'envelope points'}"
                       + (f"; {html.escape(boot)}" if boot else "") + ".</p>")
        out.append(_table(("parameter", "value", lvl if f.intervals else ""), rows))
        if k == 2:
            out.append(_table(("budget C", "N_opt", "D_opt", "loss at minimum"),
                              [(fmt(c), fmt(n), fmt(d), f"{l:.4f}") for c, n, d, l in
                               zip(f.budgets, f.n_opt, f.d_opt, f.loss_opt)]))
        if k == 3 and fits.law_floor is not None:
            out.append(f"<h3>{html.escape(_label(FLOOR_LABEL))}</h3><p>The same law with E = "
                       f"{fmt(fits.results.floor)} (exact for this data), fitting A, B, alpha, beta.</p>")
            out.append(_table(("parameter", "value", lvl if fits.law_floor.intervals else ""),
                              _law_rows(fits.law_floor)))
    return "\n".join(out)


def _agreement_section(fits: SweepFits) -> str:
    ag = fits.agreement()
    models = fits.models()
    rows = [(_label(k), fmt(v["a"]), _iv(v["interval"]), fmt(models[k].exponents["b"]))
            for k, v in ag["exponent_a"].items()]
    out = [_table(("approach", "a (N_opt ~ C^a)", f"{int(round(fits.level * 100))}% interval", "b (D_opt ~ C^b)"),
                  rows)]
    if "verdict" in ag:
        cls = "ok" if ag["verdict"].startswith("agree") else "bad"
        out.append(f"<p class={cls}>Approaches 2 and 3 {html.escape(ag['verdict'])}</p>")
        r = ag.get("n_opt_ratio_at_largest_target")
        if r:
            out.append(f"<p>At C = {fmt(r['C'])}, approach 2's N_opt is {r['approach2_over_approach3']:.2f}x "
                       "approach 3's.</p>")
    fc = fits.floor_check()
    if fc:
        cls = "ok" if fc["floor_in_interval"] or abs(fc["relative_difference"]) < 0.02 else "bad"
        out.append("<h3>Irreducible loss against the known floor</h3>")
        out.append(f"<p class={cls}>{html.escape(fc['verdict'])}.</p><p class=note>The synthetic language's entropy "
                   f"rate is {fmt(fc['entropy_floor'])} nats/token"
                   + (f"; over the eval window (whose first tokens lack full context) the floor is "
                      f"{fmt(fc['sequence_floor'])}" if fc.get("sequence_floor") is not None else "")
                   + ". No fit on natural text can make this check.</p>")
    return "\n".join(out)


def _extrapolation_section(fits: SweepFits) -> str:
    rep = fits.extrapolation
    if rep is None:
        why = fits.errors.get("extrapolation", "too few runs or budgets to hold one out")
        return f"<p class=bad>not run: {html.escape(why)}</p>"
    good = rep.mean_abs_rel_error < 0.02
    out = [f"<p>The Chinchilla law fitted on the {rep.n_fit} runs with C &le; {fmt(rep.threshold)} predicts the "
           f"{rep.n_holdout} held-out runs above it with mean |relative error| "
           f"<span class={'ok' if good else 'bad'}>{rep.mean_abs_rel_error:.2%}</span> (max "
           f"{rep.max_abs_rel_error:.2%}, signed mean {rep.mean_rel_error:+.2%}; in-sample "
           f"{rep.in_sample_rel_error:.2%}).</p>"]
    held = fits.results.frame[fits.results.C > rep.threshold]   # same rows, same order as the check's
    names = list(held["name"]) if len(held) == rep.n_holdout else [""] * rep.n_holdout
    ns = list(held["n_params"]) if len(held) == rep.n_holdout else [float("nan")] * rep.n_holdout
    out.append(_table(("run", "N", "C", "observed loss", "predicted", "relative error"),
                      [(nm, human(n), fmt(c), f"{o:.4f}", f"{p:.4f}", f"{(p - o) / o:+.2%}")
                       for nm, n, c, o, p in zip(names, ns, rep.x, rep.observed, rep.predicted)]))
    fl = fits.extrapolation_floor
    if fl is not None:
        out.append(f"<p>With E fixed to the known floor ({fmt(fits.results.floor)}), the same check gives mean "
                   f"|relative error| {fl.mean_abs_rel_error:.2%} (max {fl.max_abs_rel_error:.2%}, signed mean "
                   f"{fl.mean_rel_error:+.2%}): what knowing the irreducible loss buys.</p>")
    eo = fits.extrapolation_optimum
    if eo:
        out.append(f"<p>Approach 2 on the {eo['n_budgets_fitted']} cheaper budgets predicts N_opt = "
                   f"{fmt(eo['predicted_N_opt'])} at C = {fmt(eo['budget'])}; that budget's own parabola puts it at "
                   f"{fmt(eo['observed_N_opt'])} (ratio {eo['ratio']:.2f}).</p>")
    return "\n".join(out)


def _comparison_section(fits: SweepFits) -> str:
    c = fits.comparison
    if c is None:
        why = fits.errors.get("compare", "not run")
        return f"<p class=bad>not run: {html.escape(why)}</p>"
    w = c.winner
    out = [f"<p>Every law form crossed with every fit objective (approach 3), and approach 2's IsoFLOP optima, "
           f"fitted on the runs below the largest budget and ranked by their mean |relative error| on the "
           f"held-out runs of the largest. Prediction intervals: {html.escape(_interval_method(c))}.</p>"]
    if w is not None:
        err = w[c.score_name]
        out.append(f"<p class={'ok' if err < 0.01 else 'bad'}>Winner: {html.escape(c.describe_winner())}"
                   + (f"; {round(c.level * 100):g}% prediction intervals cover {w['n_covered']} of the "
                      f"{w['n_heldout']} held-out runs" if w.get("coverage") is not None else "")
                   + ". The allocation below uses it, refitted on every run.</p>")
    out.append(c.html_table())
    out += [f"<p class=note>{html.escape(n)}</p>" for n in c.notes]
    return "\n".join(out)


def _interval_method(c) -> str:
    if not c.bootstrap:
        return "none (bootstrap = 0)"
    return (f"percentiles of {c.bootstrap} bootstrap refits' predictions, each times exp(r*) with r* drawn from "
            "the fit's in-sample log residuals (inflated by sqrt(n/(n-p)))")


def _lr_section(fits: SweepFits) -> str:
    """Learning-rate grids: the per-cell table and the fitted law lr_opt(N) = c N^-k with its interval."""
    lr = fits.lr_law
    env = fits.results.lr_envelope or {}
    out = [f"<p>Some (size, budget) cells were trained at several learning rates. The fits above use each cell "
           f"once, at its best learning rate (the lowest loss, averaged over seeds first where a learning rate has "
           f"several): {env.get('n_dropped', 0)} of {env.get('n_before', len(fits.results))} runs were left out. "
           "The optimal learning rate of each cell is the vertex of a parabola in log lr through its best grid "
           "point and the two neighbours (clipped to the grid); a best point at the edge of the grid cannot be "
           "interpolated and is flagged.</p>"]
    g = lr.grid_cells()
    rows = []
    for _, r in g.iterrows():
        b = r["budget"] if r["budget"] is not None and r["budget"] == r["budget"] else None
        rows.append((str(r["model"]) if r["model"] is not None else "", human(r["n_params"]),
                     fmt(b) if b is not None else human(r["tokens"]),
                     ", ".join(fmt(x) for x in r["lrs"]), fmt(r["lr_best"]), fmt(r["lr_opt"]),
                     "at edge: widen the grid" if r["at_edge"] else ""))
    out.append(_table(("size", "N", "budget C" if g["budget"].notna().any() else "tokens D", "lr grid", "best lr",
                       "interpolated lr_opt", "at edge"), rows))
    law = lr.law
    if law is None:
        out.append(f"<p class=bad>lr law not fitted: {html.escape(lr.error or 'no result')}</p>")
    else:
        pct = f"{int(round(law.level * 100))}%"
        iv, ivc = law.intervals.get("k"), law.intervals.get("c")
        out.append(f"<p>Fitted law (least squares of log lr_opt on log N, {law.n_points} cells): "
                   f"<b>{html.escape(law.formula())}</b>.</p>")
        prow = [("k (lr_opt ~ N^-k)", fmt(law.k), _iv(iv)), ("c", fmt(law.c), _iv(ivc)),
                ("log residual sd", fmt(law.residual_sd), "")]
        out.append(_table(("parameter", "value", f"{pct} interval ({law.method})" if iv else ""), prow))
        nmax = float(law.N.max())
        preds = []
        for m in (1.0, 10.0, 100.0):
            lo, hi = law.predict_interval(nmax * m)
            preds.append((human(nmax * m), fmt(law.predict(nmax * m)), _iv((lo, hi)) if lo == lo else ""))
        out.append(_table(("N", "predicted lr_opt", f"{pct} interval of the law"), preds))
    out += [f"<p class=note>{html.escape(n)}</p>" for n in lr.notes + (law.notes if law is not None else [])]
    return "\n".join(out)


def _allocation_section(fits: SweepFits) -> str:
    rows = []
    if fits.winner_fit is not None:
        label = f"law-comparison winner: {fits.comparison.winner['form']} / {fits.comparison.winner['objective']}"
        for d in fits.winner_allocations():
            loss = d.get("loss") if d.get("loss") is not None else d.get("loss_under_approach3")
            rows.append((label, fmt(d["C"]), fmt(d["N_opt"]), _iv(d["intervals"].get("N_opt")),
                         fmt(d["D_opt"]), _iv(d["intervals"].get("D_opt")), f"{d['tokens_per_param']:.1f}",
                         f"{loss:.4f}" if loss is not None else ""))
    for k, allocs in fits.allocations().items():
        for d in allocs:
            loss = d.get("loss") if d.get("loss") is not None else d.get("loss_under_approach3")
            rows.append((_label(k), fmt(d["C"]), fmt(d["N_opt"]), _iv(d["intervals"].get("N_opt")),
                         fmt(d["D_opt"]), _iv(d["intervals"].get("D_opt")), f"{d['tokens_per_param']:.1f}",
                         f"{loss:.4f}" if loss is not None else ""))
    mult = ", ".join(f"{t / fits.targets[0] * 10:g}x" for t in fits.targets) if len(fits.targets) else ""
    text = (f"<p>Budgets {mult} the largest in the sweep; C = 6 N D. Loss: the winner's prediction on its row, "
            "approach 3's on the others.</p>")
    floor = fits.results.floor
    below = [r for r in rows if floor is not None and r[-1] and float(r[-1]) < floor]
    if below:
        text += (f"<p class=bad>{len(below)} predicted loss(es) lie below the known floor {fmt(floor)}, which no "
                 "model can reach: the fitted E is too low, so the loss predictions (not necessarily the "
                 "allocations) are optimistic at these budgets.</p>")
    return text + _table(("approach", "C", "N_opt", "interval", "D_opt", "interval", "D/N", "predicted loss"), rows)


def render_html(fits: SweepFits, images: dict[str, bytes], title: str = "scalekit scaling report") -> str:
    """The report page: sections of text and tables, and the figures as base64-embedded PNGs."""
    figs = []
    for name, caption in FIGURES:
        if name in images:
            b64 = base64.b64encode(images[name]).decode()
            figs.append(f"<div class=fig id=fig-{name}><img alt='{name}' src='data:image/png;base64,{b64}'>"
                        f"<p class=note>{html.escape(caption)}</p></div>")
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in fits.warnings + fits.results.notes)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class=note>{html.escape(fits.results.source)} &middot; {now} "
             f"&middot; bootstrap resamples: {fits.bootstrap}</p>",
             "<h2 id=summary>Summary</h2><pre>" + html.escape(fits.summary()) + "</pre>",
             "<h2 id=runs>What was run</h2>", _runs_section(fits.results),
             "<h2 id=fits>Fitted laws</h2>", _approach_section(fits),
             "<h2 id=agreement>How far the approaches agree</h2>", _agreement_section(fits),
             "<h2 id=extrapolation>Extrapolation check</h2>", _extrapolation_section(fits),
             "<h2 id=comparison>Law comparison</h2>", _comparison_section(fits),
             "<h2 id=allocation>Compute-optimal allocation at larger budgets</h2>", _allocation_section(fits)]
    if fits.lr_law is not None:
        parts += ["<h2 id=learning-rate>Learning rate per model size</h2>", _lr_section(fits)]
    parts += ["<h2 id=figures>Figures</h2>", *figs]
    if warn:
        parts.append(f"<h2 id=warnings>Warnings and notes</h2><ul>{warn}</ul>")
    src = html.escape(fits.results.source or "DIR")
    parts.append(f"<p class=note>Regenerate with <code>scalekit report {src}</code>; every number above is in "
                 f"<code>fits.json</code> next to this file. Single fits: <code>scalekit fit {src} --approach 2 "
                 "--bootstrap 500</code>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(source: str | Path | SweepResults, out_dir: str | Path | None = None, *,
                 fits: SweepFits | None = None, bootstrap: int = 200, level: float = 0.95, seed: int = 0,
                 grid=None, title: str = "scalekit scaling report") -> Report:
    """Fit (unless `fits` is given) and write report.html, fits.json and one PNG per figure to `out_dir`
    (default: <sweep dir>/report). Returns the paths and the fits."""
    results = source if isinstance(source, SweepResults) else load_sweep(source)
    if out_dir is None:
        if not results.source:
            raise ValueError("give out_dir when the results do not come from a sweep directory")
        out_dir = Path(results.source) / "report"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fits = fits or fit_sweep(results, bootstrap=bootstrap, level=level, seed=seed, grid=grid)
    images, pngs = {}, {}
    for name, fig in make_figures(fits).items():
        images[name] = png_bytes(fig)
        plt.close(fig)
        pngs[name] = out / f"{name}.png"
        pngs[name].write_bytes(images[name])
    (out / "fits.json").write_text(json.dumps(fits.to_dict(), indent=1, allow_nan=False))
    (out / "report.html").write_text(render_html(fits, images, title))
    return Report(html=out / "report.html", json=out / "fits.json", pngs=pngs, fits=fits)
