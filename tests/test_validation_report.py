"""The audit report: every figure and the HTML page are written, text is escaped, optional
pieces may be missing, and malformed panels are refused with a message naming the argument.

Panels are built from independent draws shaped like a reference run, (4, 500, p) with
p = 5, with real ``exact_comparison``/``discrepancy`` statistics and a real acceptance-gate
report of ``check_gates`` on an InferenceData that has the sample stats the gates need.
"""

import html
import re
import warnings

import matplotlib.image
import numpy as np
import pytest

from validation.compare import discrepancy, exact_comparison
from validation.diagnostics import check_gates
from validation.report import (
    MAX_DENSITY_COORDINATES,
    CheckpointPanel,
    write_audit_report,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.23's once-a-day refactor notice
    import arviz as az

SHAPE = (4, 500)  # chains, draws per chain
LABELS = ["psi[0]", "psi[1]", "theta[0, 0]", "theta<1>", "b[0]"]
P = len(LABELS)
CHECKPOINTS = (10, 100, 1000)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def gaussian(rng, p=P):
    A = rng.normal(size=(p, p))
    return rng.normal(size=p), A @ A.T / p + 0.5 * np.eye(p)


def gate_report(rng, draws):
    chains, n = draws.shape[:2]
    idata = az.from_dict(
        posterior={"psi": draws},
        sample_stats={
            "diverging": np.zeros((chains, n), dtype=bool),
            "energy": rng.normal(size=(chains, n)),
        },
    )
    return check_gates(idata).to_dict()


def make_panel(rng, checkpoint, *, shift=0.0, exact=True, approx=True, p=P, labels=LABELS):
    """A panel whose claimed mean is the truth plus ``shift`` sd on coordinate 3."""
    mean, cov = gaussian(rng, p)
    draws = rng.multivariate_normal(mean, cov, size=SHAPE)
    claim = mean.copy()
    claim[3] += shift * np.sqrt(cov[3, 3])
    return CheckpointPanel(
        checkpoint=checkpoint,
        labels=np.array(labels) if checkpoint == 100 else list(labels),
        draws=draws,
        mean=claim,
        cov=cov,
        comparison=exact_comparison(draws, claim, cov, labels=labels).to_dict() if exact else None,
        discrepancy=discrepancy(draws, claim, cov, labels=labels) if approx else None,
        gate=gate_report(rng, draws),
    )


def make_audit(panels):
    checks = [
        {
            "name": f"closed form vs NUTS at {q.checkpoint}",
            "checkpoint": q.checkpoint,
            "verdict": q.comparison["verdict"] if q.comparison else "report",
            "statistics": {"p_value": q.comparison["p_value"]} if q.comparison else {},
        }
        for q in panels
    ]
    checks.append(
        {"name": "sd ratio < 1.3 & mean", "checkpoint": 100, "verdict": "report", "statistics": {}}
    )
    return {
        "model": "mixed_effect",
        "agent": "meTS",
        "settings": {"K": 3, "L": 2, "d": 2},
        "reference": {"accepted": True, "parameterization": "noncentered"},
        "checks": checks,
        "negative_controls": [
            {"name": "cov x 1.3", "checkpoint": 100, "rejected": True, "rejection_rate": 1.0},
            {"name": "mean + 0.5 sd", "checkpoint": 1000, "rejected": False},
        ],
        "wall_seconds": 12.5,
        "command": "ppl-bandits audit --model mixed_effect --out <dir>",
        "seed": 7,
        "versions": {"numpy": np.__version__, "arviz": az.__version__},
    }


def assert_png(path):
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000, (path, len(data))
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.std(image)) > 0.01  # something was drawn


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    rng = np.random.default_rng(31)
    # The last checkpoint claims a mean shifted by 1 sd on "theta<1>": the exact test fails.
    panels = [make_panel(rng, ck, shift=1.0 if ck == 1000 else 0.0) for ck in CHECKPOINTS]
    audit = make_audit(panels)
    out = tmp_path_factory.mktemp("audit") / "nested" / "report"
    path = write_audit_report(audit, panels, out)
    return path, audit, panels


def test_every_figure_is_written(full_report):
    path, _, _ = full_report
    assert path.name == "report.html" and path.is_file()
    for ck in CHECKPOINTS:
        assert_png(path.parent / f"rank_{ck}.png")
        assert_png(path.parent / f"density_{ck}.png")
    assert_png(path.parent / "discrepancy.png")
    page = path.read_text(encoding="utf-8")
    sources = re.findall(r"<img src='([^']+)'", page)
    assert sorted(sources) == sorted(
        ["discrepancy.png"] + [f"{k}_{ck}.png" for ck in CHECKPOINTS for k in ("rank", "density")]
    )
    assert all((path.parent / s).is_file() for s in sources)


def test_html_has_checks_controls_gates_and_provenance(full_report):
    path, audit, _ = full_report
    page = path.read_text(encoding="utf-8")
    assert "<title>Audit: meTS on mixed_effect</title>" in page
    for check in audit["checks"]:
        assert f"<td>{html.escape(check['name'])}</td>" in page
    assert "sd ratio &lt; 1.3 &amp; mean" in page and "sd ratio < 1.3" not in page
    verdicts = [c["verdict"] for c in audit["checks"]]
    assert verdicts[:3] == ["pass", "pass", "fail"]  # the shifted mean is rejected
    for verdict in ("pass", "fail", "report"):
        assert f"<span class='{verdict}'>{verdict}</span>" in page
    for control in audit["negative_controls"]:
        assert control["name"] in page
    assert "NOT rejected" in page and "1 of 2 negative controls rejected" in page
    for name in ("chains", "r_hat", "ess_bulk", "ess_tail", "divergences", "e_bfmi"):
        assert f"<td>{name}</td>" in page
    assert page.count("reference <span class='pass'>accepted</span>") == len(CHECKPOINTS)
    assert "--out &lt;dir&gt;" in page and "--out <dir>" not in page
    assert "seed: 7" in page and "12.5 s" in page and f"numpy {np.__version__}" in page
    assert "parameterization = noncentered" in page
    assert "max |standardized mean error|" in page and "energy distance" in page


def test_html_escapes_labels(full_report):
    path, _, panels = full_report
    page = path.read_text(encoding="utf-8")
    assert "theta<1>" not in page
    assert "<td>theta&lt;1&gt;</td>" in page  # worst-coordinates table
    assert "mean:theta<1>" in panels[-1].comparison["failed"]
    assert "mean:theta&lt;1&gt;" in page  # the failed test of the shifted claim


def test_worst_coordinate_is_listed_first(full_report):
    path, _, _ = full_report
    page = path.read_text(encoding="utf-8")
    section = page[page.index("<h2>1000 rounds</h2>") :]
    first_row = re.search(r"<tr><td>([^<]*)</td>", section).group(1)
    assert first_row == "theta&lt;1&gt;"


def test_single_checkpoint_without_statistics(tmp_path):
    rng = np.random.default_rng(5)
    panel = make_panel(rng, 0, exact=False, approx=False)
    audit = {"model": "m", "agent": "a", "checks": [], "negative_controls": []}
    path = write_audit_report(audit, [panel], tmp_path)
    assert_png(tmp_path / "rank_0.png")
    assert_png(tmp_path / "density_0.png")
    assert not (tmp_path / "discrepancy.png").exists()
    page = path.read_text(encoding="utf-8")
    assert "discrepancy.png" not in page and "No checks in this audit." in page
    assert "a check that cannot fail is a defect" in page


def test_single_checkpoint_with_statistics_writes_no_discrepancy_plot(tmp_path):
    panel = make_panel(np.random.default_rng(6), 50)
    write_audit_report(make_audit([panel]), [panel], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "density_50.png",
        "rank_50.png",
        "report.html",
    ]


@pytest.mark.parametrize("kind", ["exact", "approximate"])
def test_discrepancy_plot_from_one_kind_of_statistics(tmp_path, kind):
    rng = np.random.default_rng(8)
    panels = [
        make_panel(rng, ck, exact=kind == "exact", approx=kind == "approximate") for ck in (0, 40)
    ]
    write_audit_report(make_audit(panels), panels, tmp_path)
    assert_png(tmp_path / "discrepancy.png")


def test_many_coordinates_and_an_empty_audit(tmp_path):
    p = 14
    labels = [f"theta[{i}]" for i in range(p)]
    panel = make_panel(np.random.default_rng(9), 3, exact=False, p=p, labels=labels)
    path = write_audit_report({}, [panel], tmp_path)
    assert_png(tmp_path / "rank_3.png")
    assert_png(tmp_path / "density_3.png")
    page = path.read_text(encoding="utf-8")
    section = page[page.index("<h2>3 rounds</h2>") :]
    assert section.count("<tr><td>theta[") == MAX_DENSITY_COORDINATES
    assert "Audit: agent on model" in page and "command: <code>n/a</code>" in page


def test_no_panels(tmp_path):
    path = write_audit_report(make_audit([]), [], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert "cov x 1.3" in path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def good_panel():
    return make_panel(np.random.default_rng(11), 20, approx=False)


BAD_PANELS = {
    "draws": lambda q: q._replace(draws=q.draws[0]),
    "labels": lambda q: q._replace(labels=q.labels[:-1]),
    "mean": lambda q: q._replace(mean=q.mean[:-1]),
    "cov": lambda q: q._replace(cov=q.cov[:, :-1]),
    "checkpoint": lambda q: q._replace(checkpoint=-1),
    "comparison": lambda q: q._replace(comparison={"z_mean": [0.0]}),
    "gate": lambda q: q._replace(gate=None),
}


@pytest.mark.parametrize("argument", list(BAD_PANELS))
def test_bad_panel_raises_naming_the_argument(tmp_path, good_panel, argument):
    bad = BAD_PANELS[argument](good_panel)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"panels\[1\]\.{argument}\b"):
        write_audit_report({}, [good_panel, bad], out)
    assert not out.exists()  # nothing is written before the input is checked


def test_non_positive_variance_is_refused(tmp_path, good_panel):
    cov = good_panel.cov.copy()
    cov[2, 2] = 0.0
    with pytest.raises(ValueError, match=r"panels\[0\]\.cov has a non-positive diagonal"):
        write_audit_report({}, [good_panel._replace(cov=cov)], tmp_path)


def test_bad_audit_raises_naming_the_argument(tmp_path, good_panel):
    with pytest.raises(ValueError, match=r"^audit is list"):
        write_audit_report([], [good_panel], tmp_path)
    audit = {"checks": [{"name": "x", "checkpoint": 1, "verdict": "ok"}]}
    with pytest.raises(ValueError, match=r"audit\['checks'\]\[0\]\['verdict'\] is 'ok'"):
        write_audit_report(audit, [good_panel], tmp_path)
    with pytest.raises(ValueError, match=r"panels\[1\]\.checkpoint is 20, the same as"):
        write_audit_report({}, [good_panel, good_panel], tmp_path)
    with pytest.raises(ValueError, match=r"^panels is CheckpointPanel"):
        write_audit_report({}, good_panel, tmp_path)


def test_audit_record_with_refused_reference_and_dict_panels(tmp_path):
    """The layout of validation.audit: panels as dicts, full statistics in the checks, a
    checkpoint whose reference was refused (gates only in the record), and a control that
    does not apply (``rejected`` None)."""
    rng = np.random.default_rng(12)
    panel = make_panel(rng, 40)
    short = rng.normal(size=(2, 50, P))  # two short chains: refused by the gates
    refused = gate_report(rng, short)
    assert not refused["accepted"]
    audit = make_audit([panel])
    audit["checks"][0]["statistics"] = panel.comparison
    audit["checks"].append(
        {
            "name": "exact-comparison",
            "checkpoint": 5,
            "verdict": "fail",
            "statistics": {"reason": "the NUTS reference was refused", "advice": ["run longer"]},
        }
    )
    audit["reference"] = {
        "accepted": False,
        "checkpoints": [
            {"checkpoint": 5, "accepted": False, "diagnostics": refused},
            {"checkpoint": 40, "accepted": True, "diagnostics": panel.gate},
        ],
    }
    audit["negative_controls"].append(
        {"name": "published factored mean", "checkpoint": 40, "rejected": None}
    )
    path = write_audit_report(audit, [panel._asdict()], tmp_path)
    page = path.read_text(encoding="utf-8")
    assert "5 rounds: reference <span class='fail'>refused</span>" in page
    assert "40 rounds: reference <span class='pass'>accepted</span>" in page
    assert "Only 2 chains" in page  # the gate's advice
    assert "reason = the NUTS reference was refused; advice = run longer" in page
    assert f"p_value = {panel.comparison['p_value']:.4g}" in page
    assert "<span class='report'>n/a</span>" in page and "(1 not applicable)" in page
    assert "NUTS reference: REFUSED" in page
    with pytest.raises(ValueError, match=r"panels\[0\] has keys"):
        write_audit_report(audit, [{"checkpoint": 1}], tmp_path)
