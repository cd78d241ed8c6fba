"""Audits: NUTS ground truth gated by ArviZ diagnostics, closed form versus MCMC,
simulation-based calibration and the HCSA coupling checks."""

__all__: list[str] = []
