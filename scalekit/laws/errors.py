"""Named errors and warnings of the fitting library: bad input is never a silent wrong answer."""

from __future__ import annotations


class InvalidDataError(ValueError):
    """Input values that no law can be fitted to (NaN, infinite, non-positive, missing, mismatched lengths)."""


class TooFewPointsError(InvalidDataError):
    """Fewer points than free parameters (or than a method needs, e.g. 3 per IsoFLOP parabola)."""


class ScalingLawWarning(UserWarning):
    """Base class of the warnings below; filter on it to silence or escalate them all."""


class DroppedPointsWarning(ScalingLawWarning):
    """Some rows were dropped (invalid values with drop_invalid=True, budgets with too few points, ...)."""


class NotConvergedWarning(ScalingLawWarning):
    """No start (or too few bootstrap resamples) met the convergence tolerance."""


class ParabolaOpensDownwardWarning(ScalingLawWarning):
    """An IsoFLOP parabola has a non-positive quadratic coefficient: it has no minimum; that budget is dropped."""


class VertexOutsideRangeWarning(ScalingLawWarning):
    """An IsoFLOP parabola's minimum lies outside the model sizes sampled at that budget (an extrapolated optimum)."""
