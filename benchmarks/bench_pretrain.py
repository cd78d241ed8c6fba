"""DDPM pre-training time in the dTS paper's setting (App. G.2): ε-prediction, 2-layer
ReLU MLP with 64 units taking the step as input, Adam at 1e-3, batch min(2048, n),
20,000 epochs on CPU.

For each training-set size n (default 10³ draws of N(0, I_2), the paper's posterior-quality
check, App. G.3) the whole training is timed (compilation included, and separately the
time of a second, compiled call of ``--probe-epochs`` epochs); it prints the final loss and
the z-scores of the model samples' mean and covariance against N(0, I_2).

    python benchmarks/bench_pretrain.py [--sizes 1000,10000] [--epochs 20000] [--steps 20]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from _common import Timer, save

from ppl_bandits.diffusion.ddpm import (
    MAX_BATCH,
    DDPMSettings,
    sample_ddpm,
    train_ddpm,
    training_set,
)
from ppl_bandits.runtime import configure_cpu


def _z(x: np.ndarray) -> tuple[float, float]:
    """max |z| of the sample mean and covariance entries of x against N(0, I)."""
    N, d = x.shape
    z_mean = x.mean(0) / np.sqrt(1.0 / N)
    r = x - x.mean(0)
    prods = r[:, :, None] * r[:, None, :]
    z_cov = (prods.mean(0) - np.eye(d)) / (prods.std(0) / np.sqrt(N))
    return float(np.abs(z_mean).max()), float(np.abs(z_cov).max())


def main(argv=None) -> dict:
    configure_cpu()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000")
    p.add_argument("--epochs", type=int, default=20000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--model-samples", type=int, default=4000)
    args = p.parse_args(argv)
    settings = DDPMSettings(dim=2, num_steps=args.steps, hidden=args.hidden)
    rows = []
    print(
        f"DDPM pre-training, d=2, L={args.steps}, hidden={args.hidden}, {args.epochs} epochs, "
        "Adam 1e-3"
    )
    print(f"{'n':>7} {'batch':>6} {'Adam steps':>10} {'seconds':>8} {'ms/step':>8} "
          f"{'final loss':>10} {'|z| mean':>8} {'|z| cov':>8}")  # fmt: skip
    for n in (int(s) for s in args.sizes.split(",")):
        data = training_set("gaussian", n, jax.random.key(0), dim=2)
        with Timer() as t:
            params, losses = train_ddpm(jax.random.key(1), data, settings, epochs=args.epochs)
            jax.block_until_ready(losses)
        batch = min(MAX_BATCH, n)
        steps = args.epochs * (n // batch)
        x = np.asarray(sample_ddpm(jax.random.key(2), params, settings, args.model_samples))
        zm, zc = _z(x.astype(np.float64))
        row = {
            "n": n,
            "batch": batch,
            "epochs": args.epochs,
            "adam_steps": steps,
            "seconds": t.seconds,
            "ms_per_step": 1e3 * t.seconds / steps,
            "final_loss": float(losses[-1]),
            "z_mean": zm,
            "z_cov": zc,
        }
        rows.append(row)
        print(f"{n:>7} {batch:>6} {steps:>10} {t.seconds:>8.1f} {row['ms_per_step']:>8.3f} "
              f"{row['final_loss']:>10.4f} {zm:>8.2f} {zc:>8.2f}", flush=True)  # fmt: skip
    result = {"rows": rows, "settings": settings._asdict()}
    print(f"wrote {save('pretrain', result)}")
    return result


if __name__ == "__main__":
    main()
