"""Real and built-in data: MovieLens rating files, ALS embeddings and the GMM proxy structure,
the digits task."""
