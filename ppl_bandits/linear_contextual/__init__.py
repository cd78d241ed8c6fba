"""The HCSA+TS family (Kim 2025): HCSA+TS, its baselines on the shared-parameter linear bandit,
the environment and the prediction-error metric."""
