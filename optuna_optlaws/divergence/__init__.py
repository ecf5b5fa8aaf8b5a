"""Divergence: a fitted stability criterion (peak LR, batch size, N, D, warmup) and
online detection of a diverging run from its own curve."""
