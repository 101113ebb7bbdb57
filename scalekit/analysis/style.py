"""Shared look of scalekit's plots: a colour-blind-safe palette, log-log axes, figure plumbing.

Colours are the Okabe-Ito palette (distinguishable under the common colour-vision deficiencies); ordered values
(model size, compute budget) take the `cividis` colormap, which is perceptually uniform and colour-blind safe.
Every plotting function takes an optional `ax` and returns the figure, so plots compose into a caller's grid.
matplotlib is imported on first use, so that the fits (which use the formatting helpers) do not pull in pyplot.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

# Okabe & Ito (2008): black, orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
# Colours used for fixed roles across all plots.
ROLE = {"approach1": "#E69F00", "approach2": "#0072B2", "approach3": "#D55E00", "data": "#000000",
        "floor": "#009E73", "band": "#56B4E9", "holdout": "#CC79A7"}
SEQUENTIAL = "cividis"
APPROACH_LABEL = {1: "approach 1 (training-curve envelope)", 2: "approach 2 (IsoFLOP parabolas)",
                  3: "approach 3 (parametric L(N, D))"}


def get_axes(ax=None, figsize: tuple[float, float] = (6.0, 4.2)):
    """(figure, axes): the given axes and its figure, or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def get_axes_pair(axes=None, figsize: tuple[float, float] = (11.0, 4.2)):
    """(figure, (ax0, ax1)): two side-by-side axes, or the two the caller passed."""
    if axes is not None:
        ax0, ax1 = axes
        return ax0.figure, (ax0, ax1)
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    return fig, (ax0, ax1)


def loglog(ax, x: bool = True, y: bool = True) -> None:
    """Log scales and a light grid on both decades and minor ticks."""
    if x:
        ax.set_xscale("log")
    if y:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def loss_axis(ax, axis: str = "y") -> None:
    """A log-scaled loss axis labelled with plain numbers (2.5, 3) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    target.set_minor_locator(LogLocator(base=10, subs=np.arange(1.0, 10.0, 0.1)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def value_colors(values: Sequence[float], cmap: str = SEQUENTIAL, log: bool = True):
    """A colour per value on a sequential colormap (log-normalised), and the ScalarMappable for a colorbar."""
    import matplotlib
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    v = np.asarray(values, np.float64)
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    if hi <= lo:
        hi = lo * 1.0001 + 1e-12
    norm = mcolors.LogNorm(lo, hi) if log and lo > 0 else mcolors.Normalize(lo, hi)
    cm = plt.get_cmap(cmap)
    # keep away from cividis' palest yellow, which vanishes on white
    colors = [cm(0.05 + 0.8 * float(norm(x))) for x in v]
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=mcolors.LinearSegmentedColormap.from_list(
        "trunc", cm(np.linspace(0.05, 0.85, 256))))
    return colors, sm


def sci(x: float, digits: int = 3) -> str:
    """Compact scientific notation for labels: 1.2e+12 -> '1.2e12'."""
    s = f"{x:.{digits}g}"
    return s.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def human(x: float) -> str:
    """A count with an SI suffix: 1.2e6 -> '1.2M'."""
    x = float(x)
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def png_bytes(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for embedding in HTML)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
