"""Conditional generation end to end: labels config, profiles, hidden labels, resume, classifier, evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trip.conditional import evaluate_conditional, load_classifier, train_classifier_cached
from trip.config import ConfigError, RunConfig, config_hash, load_config, static_attributes, to_dict
from trip.data.celeba import ATTRIBUTES as CELEBA_ATTRIBUTES
from trip.profiles import (
    classifier_dir,
    conditional_runs,
    conditional_section,
    read_profile,
    resolve,
    resolve_conditional,
)
from trip.train import load_data, load_labels, load_run, observed_mask, run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPECS = [{"square": 1}, {"large": 0, "warm": 1}, {"top": 1, "left": 0, "striped": 1}]


def _conditional(profile: dict) -> dict:
    profile["conditional"] = {
        "methods": {"vae_trip_cond": {"prior": {"name": "trip"}}, "cvae": {"prior": {"name": "normal"}}},
        "missing": [0.0, 0.5, 1.0],
        "specs": SPECS,
        "samples_per_spec": 6,
        "classifier": {"steps": 4, "batch_size": 16},
    }
    return profile


# -- the config ------------------------------------------------------------------------
def test_default_config_hash_is_unchanged_by_the_labels_section():
    # Pinned: the re-fit keys counted in steps and train.prior_betas (issue 11) moved it from 5bbae6dcef654194;
    # the labels section of a conditional model must still leave it alone.
    assert config_hash(RunConfig()) == "aca5af9d40be4264"
    assert config_hash(load_config({"labels": {"missing": 0.9}})) == "aca5af9d40be4264"
    assert "labels" not in to_dict(RunConfig())


def test_conditional_runs_hash_their_labels():
    cvae = {"model": {"name": "cvae"}}
    hashes = {config_hash(load_config({**cvae, "labels": {"missing": m}})) for m in (0.0, 0.5, 0.9)}
    assert len(hashes) == 3
    assert to_dict(load_config(cvae))["labels"] == {"missing": 0.0, "attributes": None}


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model": {"name": "cvae"}, "labels": {"missing": 1.5}}, r"labels.missing: must be in \[0, 1\]"),
        ({"labels": {"missing": -0.1}}, r"labels.missing: must be in \[0, 1\]"),
        ({"model": {"name": "cvae"}, "labels": {"attributes": ["nope"]}}, "labels.attributes: 'nope' is not"),
        ({"model": {"name": "cvae"}, "labels": {"attributes": []}}, "labels.attributes: must be null or"),
        ({"model": {"name": "cvae"}, "labels": {"attributes": ["warm", "warm"]}}, "labels.attributes: must be"),
        ({"model": {"name": "cvae"}, "labels": {"missing": "half"}}, "labels.missing: expected float"),
        ({"model": {"name": "cvae"}, "labels": {"hidden": 0.5}}, "labels.hidden: unknown key"),
        ({"model": {"name": "cvae"}, "prior": {"name": "trip"}}, "prior.name: cvae is built with the 'normal'"),
        ({"model": {"name": "vae_trip_cond"}}, "prior.name: vae_trip_cond is built with the 'trip'"),
    ],
)
def test_label_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


# -- profiles --------------------------------------------------------------------------
@pytest.mark.parametrize("name,count", [("shapes", 9), ("celeba64", 14)])
def test_shipped_conditional_sections_resolve(name, count):
    profile = read_profile(CONFIGS / f"{name}.yaml")
    section = conditional_section(profile)
    grid = conditional_runs(profile, [0])
    assert len(grid) == 6 and {m for m, _, _ in grid} == {"vae_trip_cond", "cvae"}
    assert section.missing == [0.0, 0.5, 0.9] and 4 <= len(section.specs) <= 6
    assert {len(spec) for spec in section.specs} <= {1, 2, 3}
    for method, missing, seed in grid:
        cfg = resolve_conditional(profile, method, missing, seed)
        assert cfg.conditional and cfg.labels.missing == missing
        assert cfg.run_dir == f"runs/{name}/cond-{method}-miss{missing * 100:g}-s0"
    known = section.attributes or static_attributes(cfg.data.name)
    assert len(known) == count and all(set(spec) <= set(known) for spec in section.specs)


def test_celeba_profile_carries_table3s_specifications():
    section = conditional_section(read_profile(CONFIGS / "celeba64.yaml"))
    assert set(section.attributes) <= set(CELEBA_ATTRIBUTES)
    named = {"Male", "Young", "Smiling", "Eyeglasses", "Wearing_Hat", "Blond_Hair", "Mustache"}  # paper's words
    assert named <= set(section.attributes)
    assert {"Young": 1, "Male": 1} in section.specs


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c.update(missing=[1.5]), r"conditional.missing: needs distinct fractions in \[0, 1\]"),
        (lambda c: c.update(specs=[{"nope": 1}]), "conditional.specs.0.nope: not an attribute"),
        (lambda c: c.update(specs=[{"square": 2}]), "conditional.specs.0.square: must be 0 or 1"),
        (lambda c: c.update(specs=[]), "conditional.specs: needs at least one"),
        (lambda c: c.update(grid=1), "conditional.grid: unknown key"),
        (lambda c: c.update(samples_per_spec=0), "conditional.samples_per_spec: must be > 0"),
        (lambda c: c["classifier"].update(steps="many"), "conditional.classifier.steps: expected int"),
        (lambda c: c.update(methods={}), "conditional.methods: needs a non-empty mapping"),
    ],
)
def test_bad_conditional_sections_name_the_key(tiny_profile, tmp_path, change, message):
    profile = _conditional(tiny_profile(tmp_path))
    change(profile["conditional"])
    with pytest.raises(ConfigError, match=message):
        conditional_section(profile)


def test_conditional_methods_must_be_conditional_models(tiny_profile, tmp_path):
    profile = _conditional(tiny_profile(tmp_path))
    with pytest.raises(ConfigError, match="conditional.methods.gan: not in profile"):
        resolve_conditional(profile, "gan", 0.5, 0)
    profile["conditional"]["methods"]["plain"] = {"model": {"name": "vae"}}
    with pytest.raises(ConfigError, match="conditional.methods.plain: model.name 'vae' is not a conditional"):
        resolve_conditional(profile, "plain", 0.5, 0)
    bad = {**profile, "conditional": {"methods": {"cvae": {}}, "specs": [{"x": 1}]}}
    (tmp_path / "bad.yaml").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="conditional.specs.0.x"):
        read_profile(tmp_path / "bad.yaml")  # checked when the profile is read


# -- hidden labels ---------------------------------------------------------------------
@pytest.mark.parametrize("missing", [0.0, 0.3, 0.5, 1.0])
def test_observed_mask_hides_the_exact_fraction_per_attribute(missing):
    mask = observed_mask(200, 4, missing, seed=3)
    assert mask.dtype == torch.bool and mask.shape == (200, 4)
    assert (~mask).sum(0).tolist() == [round(missing * 200)] * 4
    assert torch.equal(mask, observed_mask(200, 4, missing, seed=3))
    if 0 < missing < 1:
        assert not torch.equal(mask, observed_mask(200, 4, missing, seed=4))
        assert not torch.equal(mask[:, 0], mask[:, 1])  # drawn per attribute


def test_the_model_never_sees_hidden_labels(tiny_profile, tmp_path):
    profile = _conditional(tiny_profile(tmp_path))
    profile["conditional"].update(attributes=["warm", "square"], specs=[{"warm": 1}])
    cfg = resolve_conditional(profile, "cvae", 0.5, 0, tmp_path / "runs")
    train, _ = load_data(cfg)
    labels = load_labels(cfg, train)
    assert labels.names == ("warm", "square")
    truth = torch.from_numpy(train.attributes[:, [2, 0]].astype(np.int64))
    assert torch.equal(labels.values[labels.observed], truth[labels.observed])
    assert (labels.values[~labels.observed] == 0).all() and (~labels.observed).sum() == 96


# -- training and evaluation -----------------------------------------------------------
def test_resume_of_a_conditional_run_replays_exactly(tiny_profile, tmp_path):
    """Epochs are 6 steps, so the prior's re-initialisation after epoch 1 falls inside the run."""
    profile = _conditional(tiny_profile(tmp_path))
    profile["base"]["train"].update(steps=9, checkpoint_every=100)
    full = resolve_conditional(profile, "vae_trip_cond", 0.5, 1, tmp_path / "a")
    parts = resolve_conditional(profile, "vae_trip_cond", 0.5, 1, tmp_path / "b")
    run(full, progress=False)
    assert run(parts, stop_after=5, progress=False).steps == 5
    assert not (Path(parts.run_dir) / "complete.json").exists()
    run(parts, progress=False)
    a, b = load_run(full.run_dir)[1].state_dict(), load_run(parts.run_dir)[1].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda path: [{k: v for k, v in json.loads(x).items() if k != "steps_per_s"}  # noqa: E731
                          for x in (Path(path) / "metrics.jsonl").read_text().splitlines()]
    assert strip(full.run_dir) == strip(parts.run_dir)
    assert all("label" in line for line in strip(full.run_dir))


def test_unconditional_checkpoints_keep_their_keys(tiny_profile, tmp_path):
    cfg = resolve(tiny_profile(tmp_path), "vae", "trip_learnable", 0, tmp_path / "runs")
    result = run(cfg, progress=False)
    state = torch.load(result.run_dir / "checkpoint.pt", weights_only=False)
    assert set(state) == {"model", "channels", "optimizers", "step", "cursor", "rng", "config_hash"}
    assert "labels" not in (result.run_dir / "config.yaml").read_text()


def test_train_classify_and_evaluate_both_methods(tiny_profile, tmp_path):
    profile = _conditional(tiny_profile(tmp_path))
    section = conditional_section(profile)
    out = classifier_dir(profile, tmp_path / "runs")
    runs = [resolve_conditional(profile, m, 0.5, 0, tmp_path / "runs") for m in ("vae_trip_cond", "cvae")]
    # device "auto" is resolved as training resolves it (here: the CPU), never passed on to torch as is.
    info = train_classifier_cached(runs[0], out, section.classifier, device="auto")
    assert set(info["accuracy"]) == set(load_classifier(out, "auto").attribute_names) and len(info["accuracy"]) == 9
    stamp = (out / "classifier.pt").stat().st_mtime_ns
    assert train_classifier_cached(runs[0].data, out, section.classifier) == info  # cached: not retrained
    assert (out / "classifier.pt").stat().st_mtime_ns == stamp
    for cfg in runs:
        run(cfg, progress=False)
        _, model = load_run(cfg.run_dir)
        assert model.attribute_names[:2] == ("square", "large")
        result = evaluate_conditional(cfg.run_dir, out, SPECS, 6, seed=0, out_dir=tmp_path / cfg.model.name)
        written = json.loads((tmp_path / cfg.model.name / "cond_eval.json").read_text())
        assert written == json.loads(json.dumps(result))
        assert result["run"]["method"] == cfg.model.name and result["run"]["missing"] == 0.5
        assert [r["spec"] for r in result["specs"]] == SPECS
        first = result["specs"][2]
        assert set(first["violation"]) == {"top", "left", "striped"} and len(first["diversity"]) == 6
        assert 0 <= first["violation_any"] <= 1 and 0 <= first["diversity_joint"] <= np.log2(6)
        assert set(result["summary"]) == {"violation_any", "violation_mean", "diversity_mean", "diversity_joint"}
        assert set(result["readable"]) == set(model.attribute_names)
        assert all(0 <= v <= 1 for v in result["readable"].values())
        grid = Image.open(tmp_path / cfg.model.name / "cond_samples.png")
        assert grid.size == (1 + 6 * 17, 1 + len(SPECS) * 17)  # one row of six 16px samples per spec
        again = evaluate_conditional(cfg.run_dir, out, SPECS, 6, seed=0, out_dir=tmp_path / "again", device="auto")
        assert again["specs"] == result["specs"]
    with pytest.raises(ValueError, match="'nope' is not an attribute"):
        evaluate_conditional(runs[1].run_dir, out, [{"nope": 1}], 4, out_dir=tmp_path / "bad")


def test_cli_help_and_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "trip.conditional", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "cond_eval.json" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "trip.conditional", "evaluate", "--profile",
                          str(CONFIGS / "shapes.yaml"), "--method", "gan", "--run-root", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "conditional.methods.gan: not in profile" in bad.stderr
