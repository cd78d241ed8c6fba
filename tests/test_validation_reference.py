"""References: NUTS with provenance, refusal, save/load round trip and tamper detection."""

import dataclasses
import datetime
import json
import re
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl_bandits.results import collect_versions
from validation.diagnostics import GATE_NAMES, check_gates
from validation.reference import (
    DRAWS_FILE,
    RECORD_FILE,
    NUTSSettings,
    Reference,
    ReferenceMismatch,
    ReferenceRefused,
    build_reference,
    data_hash,
    load_reference,
    run_nuts,
    save_reference,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.23's once-a-day refactor notice
    import arviz as az

Y = np.array([0.3, -0.1, 0.8, 1.2, 0.4])


def normal_mean(y, prior_sd=1.0):
    """Conjugate normal-mean model: mu ~ N(0, prior_sd²), y_i | mu ~ N(mu, 1)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, prior_sd))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(scope="module")
def accepted_ref():
    return build_reference(
        normal_mean, jnp.asarray(Y), model_name="normal_mean",
        nuts=NUTSSettings(num_warmup=500, num_samples=500), seed=3, prior_sd=2.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def refused_ref():
    # Two chains cannot pass the chain gate, whatever else happens.
    return build_reference(
        normal_mean, jnp.asarray(Y), model_name="normal_mean/2chains",
        nuts=NUTSSettings(num_chains=2, num_warmup=100, num_samples=100), seed=3,
    )  # fmt: skip


# --------------------------------------------------------------------------- building


def test_run_nuts_keeps_what_the_gate_needs(accepted_ref):
    idata = accepted_ref.idata
    assert dict(idata.posterior.sizes) == {"chain": 4, "draw": 500}
    for name in ("diverging", "energy", "n_steps", "acceptance_rate", "lp"):
        assert name in idata.sample_stats
    settings = json.loads(idata.posterior.attrs["sampler_settings"])
    expected = "parallel" if jax.local_device_count() >= 4 else "sequential"
    assert settings["chain_method"] == expected


def test_run_nuts_rejects_bad_settings():
    for kwargs, pattern in [
        ({"num_chains": 0}, "num_chains is 0"),
        ({"num_samples": 2.5}, "num_samples is 2.5"),
        ({"target_accept": 1.5}, r"target_accept is 1.5; expected a number in \(0, 1\)"),
        ({"chain_method": "bogus"}, "chain_method is 'bogus'"),
        ({"seed": -1}, "seed is -1"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            seed = {"seed": kwargs.pop("seed")} if "seed" in kwargs else {}
            run_nuts(normal_mean, Y, nuts=NUTSSettings(**kwargs), **seed)


def test_nuts_settings_are_checked_before_sampling():
    checked = NUTSSettings(num_warmup=np.int64(10), target_accept=np.float32(0.5)).check()
    assert checked == NUTSSettings(num_warmup=10, target_accept=0.5)
    assert type(checked.num_warmup) is int and type(checked.target_accept) is float
    with pytest.raises(ValueError, match=r"dense_mass is 'yes'; expected True or False"):
        NUTSSettings(dense_mass="yes").check()
    with pytest.raises(ValueError, match=r"nuts is dict; expected a validation.reference"):
        run_nuts(normal_mean, Y, nuts={"num_chains": 4})
    # A setting passed the old way must not reach the model as a keyword argument.
    with pytest.raises(TypeError, match=r"num_warmup was passed as a model keyword"):
        run_nuts(normal_mean, Y, num_warmup=10)


def test_accepted_reference_record(accepted_ref):
    ref = accepted_ref
    assert ref.accepted and ref.require_accepted() is ref
    rec = ref.record
    json.dumps(rec)  # JSON-ready
    assert rec["model_name"] == "normal_mean"
    assert rec["model_function"].endswith("normal_mean")
    assert rec["data_hash"] == data_hash(jnp.asarray(Y), prior_sd=2.0)
    assert rec["seed"] == 3 and rec["sampler"]["seed"] == 3
    sampler = rec["sampler"]
    assert (sampler["num_chains"], sampler["num_warmup"], sampler["num_samples"]) == (4, 500, 500)
    assert (sampler["target_accept"], sampler["dense_mass"], sampler["max_tree_depth"]) == (
        0.9,
        False,
        10,
    )
    assert {"jax", "jaxlib", "numpyro", "arviz", "numpy", "python"} <= set(rec["versions"])
    assert rec["diagnostics"] == ref.gate.to_dict()
    assert [g["name"] for g in rec["diagnostics"]["gates"]] == list(GATE_NAMES)
    assert rec["accepted"] is True and rec["var_names"] == ["mu"]
    assert datetime.datetime.fromisoformat(rec["created"]).tzinfo is not None
    assert rec["data_summary"]["args"][0].endswith("[5]")


def test_refused_reference_is_returned_but_cannot_be_used(refused_ref):
    assert not refused_ref.accepted and refused_ref.record["accepted"] is False
    with pytest.raises(ReferenceRefused) as info:
        refused_ref.require_accepted()
    message = str(info.value)
    assert "normal_mean/2chains" in message and "chains = 2" in message
    assert "more chains" in message  # the advice travels with the refusal


def test_collect_versions():
    v = collect_versions()
    assert v["numpy"] == np.__version__ and v["jax"] == jax.__version__
    assert v["arviz"] == az.__version__ and v["numpyro"] == numpyro.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", v["python"])


# --------------------------------------------------------------------------- data hash


class History(NamedTuple):
    contexts: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray


def test_data_hash_changes_with_one_number(rng):
    h = History(rng.normal(size=(6, 2)), np.arange(6) % 3, rng.normal(size=6))
    base = data_hash(h, noise_sd=0.5)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", base)
    assert data_hash(History(*(a.copy() for a in h)), noise_sd=0.5) == base  # deterministic
    changed = h.rewards.copy()
    changed[4] += 1e-9
    assert data_hash(h._replace(rewards=changed), noise_sd=0.5) != base
    actions = h.actions.copy()
    actions[0] = 2
    assert data_hash(h._replace(actions=actions), noise_sd=0.5) != base
    assert data_hash(h, noise_sd=0.6) != base  # a non-array argument
    assert data_hash(h, sigma=0.5) != base  # its keyword
    assert data_hash(h.contexts, h.actions, h.rewards) != data_hash(
        h.actions, h.contexts, h.rewards
    )
    assert data_hash(h.rewards.reshape(2, 3)) != data_hash(h.rewards)  # shape matters


def test_data_hash_is_about_values_not_storage():
    actions = np.array([0, 2, 1, 1])
    assert data_hash(actions.astype(np.int32)) == data_hash(actions.astype(np.int64))
    assert data_hash(jnp.asarray(actions)) == data_hash(actions)
    x32 = np.array([0.5, -1.25], dtype=np.float32)  # exactly representable
    assert data_hash(x32) == data_hash(x32.astype(np.float64)) == data_hash(jnp.asarray(x32))
    assert data_hash(np.asfortranarray(np.eye(3)[:, ::-1])) == data_hash(np.eye(3)[:, ::-1])


# --------------------------------------------------------------------------- storage


def test_save_load_round_trip(accepted_ref, tmp_path):
    directory = save_reference(accepted_ref, tmp_path / "normal_mean")
    assert (directory / DRAWS_FILE).is_file() and (directory / RECORD_FILE).is_file()
    loaded = load_reference(directory)
    assert loaded.accepted and loaded.require_accepted() is loaded
    np.testing.assert_array_equal(
        loaded.idata.posterior["mu"].values, accepted_ref.idata.posterior["mu"].values
    )
    np.testing.assert_array_equal(
        loaded.idata.sample_stats["energy"].values, accepted_ref.idata.sample_stats["energy"].values
    )
    assert loaded.gate == accepted_ref.gate  # recomputed from the stored draws
    stored = dict(loaded.record)
    files = stored.pop("files")
    assert stored == accepted_ref.record
    assert files["draws"] == DRAWS_FILE and files["draws_sha256"].startswith("sha256:")
    assert load_reference(directory, recheck=False).gate == accepted_ref.gate


def test_save_does_not_overwrite_by_default(accepted_ref, tmp_path):
    save_reference(accepted_ref, tmp_path)
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / DRAWS_FILE))):
        save_reference(accepted_ref, tmp_path)
    save_reference(accepted_ref, tmp_path, overwrite=True)
    assert load_reference(tmp_path).accepted


def test_refused_reference_is_saved_only_on_request(refused_ref, tmp_path):
    with pytest.raises(ReferenceRefused, match="allow_refused=True"):
        save_reference(refused_ref, tmp_path / "refused")
    assert not (tmp_path / "refused" / RECORD_FILE).exists()
    save_reference(refused_ref, tmp_path / "refused", allow_refused=True)
    loaded = load_reference(tmp_path / "refused")  # the recheck agrees: refused
    assert not loaded.accepted
    with pytest.raises(ReferenceRefused):
        loaded.require_accepted()


def _edit_record(directory, edit):
    path = directory / RECORD_FILE
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_recheck_detects_a_tampered_verdict(accepted_ref, refused_ref, tmp_path):
    good = save_reference(accepted_ref, tmp_path / "good")
    _edit_record(good, lambda r: r.update(accepted=False))
    with pytest.raises(ReferenceMismatch, match="accepted is False but the draws give True"):
        load_reference(good)
    load_reference(good, recheck=False)  # without the recheck the edit goes unseen

    gate = save_reference(accepted_ref, tmp_path / "gate")
    _edit_record(gate, lambda r: r["diagnostics"]["gates"][1].update(passed=False))
    with pytest.raises(ReferenceMismatch, match="gate r_hat is stored as passed=False"):
        load_reference(gate)

    bad = save_reference(refused_ref, tmp_path / "bad", allow_refused=True)

    def promote(r):
        r["accepted"] = True
        r["diagnostics"]["accepted"] = True
        for g in r["diagnostics"]["gates"]:
            g["passed"] = True

    _edit_record(bad, promote)
    with pytest.raises(ReferenceMismatch, match="gate chains is stored as passed=True"):
        load_reference(bad)


def test_changed_draws_are_detected(accepted_ref, tmp_path):
    directory = save_reference(accepted_ref, tmp_path)
    idata = accepted_ref.idata.copy()
    idata.posterior["mu"] = idata.posterior["mu"] + 1.0
    idata.to_netcdf(str(directory / DRAWS_FILE))
    with pytest.raises(ReferenceMismatch, match="draws were changed"):
        load_reference(directory, recheck=False)


def test_missing_files_name_the_path(accepted_ref, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_reference(missing)
    directory = save_reference(accepted_ref, tmp_path / "ref")
    (directory / DRAWS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(directory / DRAWS_FILE))):
        load_reference(directory)
    (directory / RECORD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(directory / RECORD_FILE))):
        load_reference(directory)
    (directory / RECORD_FILE).write_text("{not json")
    save_reference(accepted_ref, tmp_path / "other")
    (directory / DRAWS_FILE).write_bytes((tmp_path / "other" / DRAWS_FILE).read_bytes())
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_reference(directory)


def test_reference_built_by_hand_follows_the_same_rules(accepted_ref):
    # A refused gate on accepted draws: the report, not the draws, decides.
    short = accepted_ref.idata.isel(draw=slice(0, 30))
    ref = dataclasses.replace(accepted_ref, idata=short, gate=check_gates(short))
    assert isinstance(ref, Reference) and not ref.accepted
    with pytest.raises(ReferenceRefused, match="ess_bulk"):
        ref.require_accepted()
