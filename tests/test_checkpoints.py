"""Safe checkpoints: round trip, corrupt / truncated / mismatched files give clear errors, pickles are never run."""
import json
import os
import pickle

import pytest
import torch

from reference_models import CheckpointError, load
from reference_models import checkpoints as ck
from reference_models.cache import cache_dir, checkpoint_path
from reference_models.train import train

STATE = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
CONFIG = {"name": "toy", "schedule": "vp", "prediction": "eps", "architecture": {"type": "mlp", "hidden": 4}}


def test_round_trip(tmp_path):
    path = ck.save_checkpoint(tmp_path / "m.safetensors", STATE, CONFIG)
    state, config = ck.load_checkpoint(path, {"name": "toy", "prediction": "eps"})
    assert config == CONFIG
    assert all(torch.equal(state[k], STATE[k]) for k in STATE)
    assert json.loads((tmp_path / "m.json").read_text()) == CONFIG
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_truncated_checkpoint_is_reported(tmp_path):
    path = ck.save_checkpoint(tmp_path / "m.safetensors", STATE, CONFIG)
    raw = path.read_bytes()
    for cut in (4, len(raw) // 2, len(raw) - 3):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            ck.load_checkpoint(path)


def test_corrupt_header_is_reported(tmp_path):
    path = ck.save_checkpoint(tmp_path / "m.safetensors", STATE, CONFIG)
    raw = bytearray(path.read_bytes())
    raw[10:20] = b"\xff" * 10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.load_checkpoint(path)


def test_mismatched_config_is_reported(tmp_path):
    path = ck.save_checkpoint(tmp_path / "m.safetensors", STATE, CONFIG)
    with pytest.raises(CheckpointError, match="prediction='eps'.*prediction='v' was requested"):
        ck.load_checkpoint(path, {"prediction": "v"})
    with pytest.raises(CheckpointError, match="architecture"):
        ck.load_checkpoint(path, {"architecture": {"type": "mlp", "hidden": 8}})


def test_config_file_that_disagrees_with_the_weights_is_reported(tmp_path):
    path = ck.save_checkpoint(tmp_path / "m.safetensors", STATE, CONFIG)
    (tmp_path / "m.json").write_text(json.dumps({**CONFIG, "prediction": "x0"}))
    with pytest.raises(CheckpointError, match="does not match the config stored"):
        ck.load_checkpoint(path)
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match="no config file"):
        ck.load_checkpoint(path)


def test_weights_that_do_not_fit_the_network_are_not_loaded(tmp_path):
    net = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit"):
        ck.load_state_into(net, {"weight": torch.zeros(2, 3)}, "x")  # bias missing
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)


class _Payload:
    """Unpickling this creates a file: the malicious checkpoint of the tests."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    proof = tmp_path / "proof_the_payload_works"
    pickle.loads(pickle.dumps(_Payload(proof)))  # the payload really creates a file when unpickled
    assert proof.exists()
    marker = tmp_path / "pwned"
    path = tmp_path / "m.safetensors"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    (tmp_path / "m.json").write_text(json.dumps(CONFIG))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.load_checkpoint(path)
    assert not marker.exists()
    # torch.save's zip format as well
    torch.save({"x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(path)
    assert not marker.exists()


def test_interrupted_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = ck.save_checkpoint(tmp_path / "m.safetensors", STATE, CONFIG)
    old = path.read_bytes()
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith(".safetensors"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {"w": torch.zeros(2, 3), "b": torch.zeros(3)}, {**CONFIG, "steps": 9})
    monkeypatch.setattr(ck.os, "replace", real_replace)
    assert path.read_bytes() == old  # weights untouched, no temporary file left behind
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(CheckpointError, match="interrupted write"):  # new JSON, old weights: reported
        ck.load_checkpoint(path)


def test_load_reports_a_corrupt_cached_model_and_a_mismatched_one(tmp_path):
    train("toy2d-moons", "vp", "eps", steps=2, cache_dir=tmp_path, progress=False)
    path = checkpoint_path("toy2d-moons", "vp", "eps", tmp_path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load("toy2d-moons", cache_dir=tmp_path, train=False)
    # a checkpoint trained for eps placed where the v model should be
    path.write_bytes(good)
    vpath = checkpoint_path("toy2d-moons", "vp", "v", tmp_path)
    vpath.write_bytes(good)
    vpath.with_suffix(".json").write_bytes(path.with_suffix(".json").read_bytes())
    with pytest.raises(CheckpointError, match="prediction='eps'.*'v' was requested"):
        load("toy2d-moons", prediction="v", cache_dir=tmp_path, train=False)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLERBENCH_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("SAMPLERBENCH_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "samplerbench"
