"""The pieces every family shares: the agent and environment protocols, the posterior claims,
linear algebra, likelihood bookkeeping, the Laplace expansion and the round loop."""
