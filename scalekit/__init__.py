"""scalekit: a JAX toolkit for scaling research."""

__version__ = "0.1.0"
