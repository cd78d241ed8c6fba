"""MovieLens loaders, checksums, the environment and the simulate command (generated files only:
the MovieLens licence forbids shipping the data)."""

import hashlib
import json

import jax
import numpy as np
import pytest

from models.mixed_effect import MixedEffectPrior
from ppl_bandits.data.movielens import (
    FORMATS,
    detect_format,
    download,
    from_arrays,
    load_ratings,
    synthetic_ratings,
    verify_checksum,
    write_ratings,
)
from ppl_bandits.experiments.movielens import movielens_environment, movielens_structure
from ppl_bandits.mixed_effect.environment import MixedEffectParams

# Original ids are not contiguous, as in the real files.
USERS = np.array([7, 7, 3, 12, 3, 12, 7])
ITEMS = np.array([50, 31, 50, 2, 1000, 31, 2])
STARS = np.array([4.0, 3.0, 5.0, 1.0, 2.0, 4.0, 5.0])
HALF = np.array([4.5, 3.0, 0.5, 1.0, 2.5, 4.0, 5.0])


def check_same(r, users, items, ratings):
    assert np.array_equal(r.user_ids[r.user], users)
    assert np.array_equal(r.item_ids[r.item], items)
    assert np.array_equal(r.rating, ratings)
    assert r.user_ids.tolist() == sorted(set(users.tolist()))
    assert r.item_ids.tolist() == sorted(set(items.tolist()))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_loader_reads_its_format(tmp_path, fmt):
    stars = HALF if fmt == "latest" else STARS
    path = write_ratings(tmp_path / FORMATS[fmt], from_arrays(USERS, ITEMS, stars), fmt)
    for where in (path, tmp_path, tmp_path.parent):  # the file, its directory, one level up
        if where == tmp_path.parent and len(list(where.iterdir())) > 1:
            continue
        r = load_ratings(where)
        assert r.format == fmt and r.source == str(path)
        check_same(r, USERS, ITEMS, stars)
    # The same files under other names: the content decides.
    other = tmp_path / "other.txt"
    other.write_text(path.read_text())
    assert detect_format(other) == fmt
    check_same(load_ratings(other), USERS, ITEMS, stars)


def test_real_file_layouts(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert load_ratings(tmp_path / "u.data").rating.tolist() == [3.0, 3.0]
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\r\n1::661::3::978302109\r\n")
    assert load_ratings(tmp_path / "ratings.dat").item_ids.tolist() == [661, 1193]
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
    )
    assert load_ratings(tmp_path / "ratings.csv").rating.tolist() == [4.0, 4.5]
    with pytest.raises(ValueError, match="several ratings files"):
        load_ratings(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("u.data", "", "is empty"),
        ("u.data", "\n\n", "is empty"),
        ("ratings.csv", "", "is empty"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n", "is empty"),
        ("ratings.csv", "user,item,rating,time\n1,2,3,4\n", "has header"),
        ("ratings.dat", "1::2::3::4\n1::2::3\n", r"line 2: 3 fields"),
        ("u.data", "1\t2\t3\t4\n5\t6\t7\t8\t9\n", r"line 2: 5 fields"),
        ("ratings.dat", "1::2::3::4\n1::2::4::5\n1::2::abc::6\n", r"line 3: rating is 'abc'"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,x,3,4\n", r"line 2: item is 'x'"),
        # Errors that compensate in the total count of numbers are still found.
        ("ratings.dat", "1::2::3\n4::5::6::7::8\n", r"line 1: 3 fields"),
        ("u.data", "1 2\t3\t4\t5\n1\t\t3\t4\n", r"line 1: user is '1 2'"),
        ("u.data", "1.5\t2\t3\t4\n", "expected integers"),
        ("u.data", "1\t2\tnan\t4\n", r"line 1: rating is .nan.; expected a finite number"),
    ],
)
def test_bad_files_raise_naming_file_and_problem(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as err:
        load_ratings(path)
    assert str(path) in str(err.value)


def test_bad_paths_and_undetectable_content(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_ratings(tmp_path / "nope.dat")
    with pytest.raises(ValueError, match="holds no MovieLens ratings file"):
        load_ratings(tmp_path)
    odd = tmp_path / "odd.txt"
    odd.write_text("1;2;3;4\n")
    with pytest.raises(ValueError, match="cannot tell the format") as err:
        load_ratings(odd)
    assert str(odd) in str(err.value)
    with pytest.raises(ValueError, match="format is 'x'"):
        load_ratings(odd, format="x")


def test_checksum_verification_on_a_local_file(tmp_path):
    path = tmp_path / "ml-test.zip"
    path.write_bytes(b"not really a zip archive\n" * 100)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert verify_checksum(path, md5) == md5
    assert verify_checksum(path, sha.upper()) == sha  # SHA-256 chosen by length, any case
    assert verify_checksum(path, f"{md5}  ml-test.zip\n") == md5  # the .md5 file format
    # Negative controls: one flipped digit, one changed byte of the file.
    wrong = md5[:-1] + ("0" if md5[-1] != "0" else "1")
    with pytest.raises(ValueError, match="expected " + wrong) as err:
        verify_checksum(path, wrong)
    assert str(path) in str(err.value)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ValueError, match="md5"):
        verify_checksum(path, md5)
    with pytest.raises(ValueError, match="32 \\(MD5\\) or 64"):
        verify_checksum(path, "abc")
    with pytest.raises(ValueError, match="name is 'ml-10x'"):
        download("ml-10x", tmp_path)  # refused before any network access


# --------------------------------------------------------------------------- environment


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ml") / "ratings.dat"
    write_ratings(path, synthetic_ratings(120, 80, 3000, seed=2), "1m")
    return path


def test_environment_contract_and_cache(small_data):
    env = movielens_environment(small_data, num_actions=6, num_effects=2, dim=3, rank=3)
    assert movielens_environment(small_data, num_actions=6, num_effects=2, dim=3, rank=3) is env
    s = movielens_structure(small_data, rank=3, num_effects=2)
    prior, params = env.draw(jax.random.key(0))
    assert isinstance(prior, MixedEffectPrior) and isinstance(params, MixedEffectParams)
    assert (prior.num_actions, prior.num_effects, prior.dim) == (6, 2, 3)
    movies = s.embeddings.item[s.movies]
    # Every θ_i is a distinct movie's vector; its mixing weights are that movie's memberships.
    rows = [int(np.argmin(np.sum((movies - t) ** 2, 1))) for t in np.asarray(params.theta)]
    assert len(set(rows)) == 6
    np.testing.assert_allclose(np.asarray(params.theta), movies[rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(prior.mixing[:, :, 0, 0]), s.proxy.weights[rows], rtol=1e-5, atol=1e-6
    )
    ctx = env.contexts(jax.random.key(1), params, 0)
    assert ctx.shape == (6, 3) and np.allclose(ctx, ctx[0])
    users = s.embeddings.user[s.users]
    assert np.min(np.sum((users - np.asarray(ctx[0])) ** 2, 1)) < 1e-8
    with pytest.raises(ValueError, match="dim is 2 but rank is 3"):
        movielens_environment(small_data, num_actions=6, num_effects=2, dim=2, rank=3)
    with pytest.raises(ValueError, match="num_actions is 1000"):
        movielens_environment(small_data, num_actions=1000, num_effects=2, dim=3, rank=3)


def test_simulate_movielens_linear_through_cli(small_data, tmp_path, capsys):
    from ppl_bandits.cli import main

    out = tmp_path / "out"
    argv = ["simulate", "movielens-linear", "--data", str(small_data), "--runs", "2"]
    argv += ["--rounds", "20", "--K", "5", "--L", "2", "--d", "3", "--agents", "meTS-Lin"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["data"] == str(small_data)
    assert summary["settings"]["embedding"]["converged"]
    assert np.isfinite(summary["agents"]["meTS-Lin"]["final_regret_mean"])
    # Without --data: a clear error, exit status 2.
    assert main(["simulate", "movielens-linear", "--runs", "2", "--quiet"]) == 2
    assert "--data PATH" in capsys.readouterr().err


@pytest.mark.slow
def test_simulate_movielens_dts_through_cli(small_data, tmp_path, capsys):
    """movielens-dts pre-trains its DDPM on half the movies and runs dTS beside the agents
    that read the proxy prior; an oversized pretrain_samples is refused, not capped."""
    from ppl_bandits.cli import main

    out = tmp_path / "dts"
    argv = ["simulate", "movielens-dts", "--data", str(small_data), "--runs", "2"]
    argv += ["--rounds", "20", "--K", "5", "--L", "2", "--d", "3"]
    argv += ["--set", "epochs=50", "--set", "num_steps=3", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"dTS", "meTS-Lin", "LinTS", "HierTS"} <= set(summary["agents"])
    for row in summary["agents"].values():
        assert np.isfinite(row["final_regret_mean"])
    capsys.readouterr()
    assert main([*argv, "--pretrain-samples", "100000", "--out", str(tmp_path / "x")]) == 2
    assert "pretrain_samples is 100000" in capsys.readouterr().err


@pytest.mark.slow
def test_audit_on_a_movielens_proxy_problem(small_data, tmp_path):
    """``ppl-bandits audit --data``: meTS-Lin is exact under the proxy model the GMM defines,
    so the closed form must pass against NUTS on that model and reject every control."""
    from ppl_bandits.cli import main

    out = tmp_path / "audit"
    argv = ["audit", "--data", str(small_data), "--K", "4", "--L", "2", "--d", "2"]
    argv += ["--rounds", "60", "--checkpoints", "60", "--warmup", "500", "--samples", "500"]
    assert main([*argv, "--out", str(out)]) == 0
    record = json.loads((out / "audit.json").read_text())
    assert record["verdict"] == "pass"
    assert all(c["rejected"] in (True, None) for c in record["negative_controls"])
    assert any(c["rejected"] for c in record["negative_controls"])


# --------------------------------------------------------------------------- supervised


def test_supervised_environment_rewards_the_right_class():
    from ppl_bandits.core.types import Agent
    from ppl_bandits.data.digits import supervised_task
    from ppl_bandits.experiments.supervised import lifted, supervised_environment

    task = supervised_task(num_bootstrap=40, subset=60, epochs=2, num_steps=2, hidden=8)
    assert task.samples.shape == (40, 10 * 4) and 0.5 < task.accuracy < 1.0
    env = supervised_environment(task)
    prior, params = env.draw(jax.random.key(0))
    for j in (0, 17, len(task.labels) - 1):
        ctx = jax.numpy.broadcast_to(params.features[j], (10, 4))
        r = np.asarray(env.mean_rewards(params, ctx))
        assert r.tolist() == np.eye(10)[task.labels[j]].tolist()
    # LinTS's marginals are the per-class moments of the bootstrap samples.
    S = task.samples.reshape(40, 10, 4)
    np.testing.assert_allclose(np.asarray(prior.mixed.mu_psi), S.mean(0).ravel(), rtol=1e-5)
    # φ(x, a) = e_a ⊗ x: row a holds x in block a and zeros elsewhere.
    seen = {}
    probe = Agent("probe", None, lambda k, s, c: seen.setdefault("phi", c), None)
    lifted(probe, 10).act(None, None, np.arange(40, dtype=np.float32).reshape(10, 4))
    phi = np.asarray(seen["phi"])
    assert phi.shape == (10, 40)
    assert np.array_equal(phi[3, 12:16], np.arange(12.0, 16.0)) and phi[3].sum() == 54.0
