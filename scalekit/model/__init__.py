"""The transformer, its functional wrapper and parameter/FLOP counting."""
