"""Audits: NUTS ground truth gated by ArviZ diagnostics, closed form versus MCMC,
simulation-based calibration and the HCSA coupling checks.

The public entry point for any posterior of any NumPyro model is :func:`audit_posterior`.
"""

from validation.posterior_audit import AuditResult, audit_posterior

__all__ = ["AuditResult", "audit_posterior"]
