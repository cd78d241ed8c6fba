"""ppl-bandits: structured Thompson sampling with audited posteriors (fast path)."""

__all__: list[str] = []
