"""Diffusion Thompson sampling (Aouali 2025): the latent-chain posteriors, agents, environments
and DDPM pre-training."""
