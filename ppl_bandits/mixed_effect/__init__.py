"""Mixed-effect Thompson sampling (Aouali, Kveton, Katariya 2023): exact posteriors, agents,
per-action baselines and the environment."""
