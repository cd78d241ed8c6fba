"""Files and figures of the HCSA coupling checks.

:mod:`validation.coupling` runs the checks; this module writes one run of them
(:func:`write_coupling_report`): ``coupling.json`` (the result without its figure data,
with its provenance), one figure per check and ``report.html``, which links them:

- ``coupling_gram_identity.png``: check 1, the Lemma 1 identity errors against the
  round-off tolerance, with the unscaled-eigenvector control;
- ``coupling_trial_counts.png``: check 2, the CAS trial counts against the truncated
  Geometric(γ) law, with the wrong-φ control;
- ``coupling_unbiasedness.png``: check 3, the absolute z-scores of the pseudo-rewards against the
  Bonferroni critical value;
- ``coupling_estimators.png``: check 4, the ECDFs of the V-normalized error of the HCSA
  and hypothetical estimators, and of the two controls.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ppl_bandits.results import prepare_out_dir, provenance, write_json
from validation.coupling import truncated_geometric_pmf

__all__ = ["write_coupling_report"]


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _plot_gram(data, path):
    fig = _figure()
    ax = fig.add_subplot()
    pos = np.arange(len(data["scenarios"]))
    for off, key, color, label in (
        (-0.18, "log10_errors", "tab:blue", "hypothetical contexts"),
        (0.18, "log10_errors_control", "tab:red", "control: unscaled eigenvectors"),
    ):
        vals = data[key]
        ax.boxplot(
            vals,
            positions=pos + off,
            widths=0.3,
            patch_artist=True,
            boxprops={"facecolor": color, "alpha": 0.5},
            showfliers=False,
        )
        ax.plot([], [], color=color, lw=6, alpha=0.5, label=label)
    ax.axhline(np.log10(data["tolerance"]), color="k", ls="--", lw=1, label="tolerance")
    ax.set_xticks(pos, data["scenarios"])
    ax.set_ylabel("log10 max |Σ z zᵀ − Σ x xᵀ| / scale")
    ax.set_title("Check 1: Lemma 1 Gram identity (float64)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _plot_trials(data, path):
    fig = _figure()
    rounds = list(data["rounds"])
    axes = fig.subplots(1, len(rounds), sharey=True)
    axes = np.atleast_1d(axes)
    g = data["gamma"]
    for ax, t in zip(axes, rounds, strict=True):
        counts = np.asarray(data["rounds"][t]["counts"], float)
        rho = data["rounds"][t]["bound"]
        k = np.arange(1, rho + 1)
        n = counts.sum()
        ax.bar(k, counts / n, color="tab:blue", alpha=0.6, label="CAS")
        ax.plot(k, truncated_geometric_pmf(g, rho), "k.-", ms=3, label=f"Geometric({g:g})")
        ctrl = np.asarray(data["control_counts"][t], float)
        kk = np.arange(1, ctrl.size + 1)
        ax.plot(kk, ctrl / ctrl.sum(), "r.", ms=3, label="control (wrong φ)")
        ax.set_xlim(0.5, min(rho, 15) + 0.5)
        ax.set_title(f"t = {t}, ρ_t = {rho}", fontsize=9)
        ax.set_xlabel("trials")
    axes[0].set_ylabel("frequency")
    axes[0].legend(fontsize=7)
    fig.suptitle("Check 2: CAS trial counts")
    fig.tight_layout()
    fig.savefig(path)


def _plot_unbiased(data, path):
    fig = _figure()
    ax = fig.add_subplot()
    names = list(data["z"])
    for i, name in enumerate(names):
        z = np.abs(np.asarray(data["z"][name]))
        ax.scatter(np.full(z.size, i) + np.linspace(-0.25, 0.25, z.size), z, s=6)
    ax.axhline(data["critical"], color="k", ls="--", lw=1, label="Bonferroni critical |z|")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("|mean − z_jᵀθ*| / MCSE")
    ax.set_title("Check 3: unbiasedness of the pseudo-rewards (eq. 11)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _plot_coupling(data, path):
    fig = _figure()
    panels = list(data)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, name in zip(axes, panels, strict=True):
        for key, color in (("hcsa", "tab:blue"), ("hypothetical", "tab:orange")):
            x = np.sort(np.asarray(data[name][key]))
            ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", color=color, label=key)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("‖θ̂ − θ*‖_V")
    axes[0].set_ylabel("ECDF")
    axes[0].legend(fontsize=8)
    fig.suptitle("Check 4: V-normalized error, HCSA vs hypothetical estimator")
    fig.tight_layout()
    fig.savefig(path)


def write_coupling_report(
    result: dict,
    out_dir,
    *,
    command: str | None = None,
    versions: dict | None = None,
    wall_seconds: float | None = None,
) -> Path:
    """Write ``coupling.json``, four PNG figures and ``report.html`` to ``out_dir``.

    Parameters
    ----------
    result : dict
        Output of :func:`validation.coupling.run_coupling_checks`.
    out_dir : path
        Created if missing; a ``ValueError`` naming ``out_dir`` when it cannot be written.
    command : str, optional
        The command that produced the result (recorded verbatim); the running process's
        command line when omitted (:func:`ppl_bandits.results.provenance`).
    versions : dict, optional
        Library versions; collected from the installed packages when omitted.
    wall_seconds : float, optional
        Overrides the run's own wall time (e.g. to include compilation by the caller).

    Returns
    -------
    Path of ``coupling.json``: ``result`` without its ``figure_data``, with the provenance
    fields ``command``, ``seed``, ``wall_seconds`` and ``versions``.
    """
    out = prepare_out_dir(out_dir, "out_dir")
    record = {k: v for k, v in result.items() if k != "figure_data"}
    record |= provenance(
        seed=result["seed"],
        wall_seconds=result.get("wall_seconds") if wall_seconds is None else wall_seconds,
        command=command,
    )
    if versions is not None:
        record["versions"] = versions
    path = out / "coupling.json"
    write_json(path, record)
    figs = result.get("figure_data", {})
    written = []
    for key, fname, fn in (
        ("gram", "coupling_gram_identity.png", _plot_gram),
        ("trials", "coupling_trial_counts.png", _plot_trials),
        ("unbiased", "coupling_unbiasedness.png", _plot_unbiased),
        ("coupling", "coupling_estimators.png", _plot_coupling),
    ):
        if key in figs:
            fn(figs[key], out / fname)
            written.append(fname)
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td class='{c['verdict']}'>{c['verdict']}</td></tr>"
        for c in record.get("checks", [])
    )
    ctrl = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c['check'])}</td>"
        f"<td>{html.escape(c.get('description', ''))}</td>"
        f"<td class='{'pass' if c['rejected'] else 'fail'}'>"
        f"{'rejected' if c['rejected'] else 'NOT rejected'}</td></tr>"
        for c in record.get("negative_controls", [])
    )
    imgs = "".join(f"<figure><img src='{f}' alt='{f}'></figure>" for f in written)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>HCSA coupling checks</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td,th{{border:1px solid #ccc;padding:.2em .6em}}table{{border-collapse:collapse}}
.pass{{color:#070}}.fail{{color:#b00;font-weight:bold}}img{{max-width:100%}}</style></head>
<body><h1>HCSA coupling checks: {html.escape(str(record.get("verdict")))}</h1>
<p>seed {html.escape(str(record["seed"]))}, wall time {record["wall_seconds"] or 0:.1f} s,
command <code>{html.escape(str(record["command"]))}</code>;
details in <a href="coupling.json">coupling.json</a>.</p>
<h2>Checks</h2><table><tr><th>check</th><th>verdict</th></tr>{rows}</table>
<h2>Negative controls</h2><table><tr><th>control</th><th>check</th><th>what is wrong</th>
<th>outcome</th></tr>{ctrl}</table>
<h2>Figures</h2>{imgs}
</body></html>
"""
    (out / "report.html").write_text(page)
    return path
