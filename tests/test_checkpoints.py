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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # one file: weights and config together


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


def test_an_older_versions_json_copy_is_ignored_and_removed_on_rewrite(tmp_path):
    path = ck.save_checkpoint(tmp_path / "m.safetensors", STATE, CONFIG)
    (tmp_path / "m.json").write_text(json.dumps({**CONFIG, "prediction": "x0"}))  # stale, as an old pair could be
    assert ck.load_checkpoint(path)[1] == CONFIG  # the header is the one source of truth
    ck.save_checkpoint(path, STATE, {**CONFIG, "steps": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def _with_config_text(tmp_path, text) -> "os.PathLike":
    from safetensors.torch import save

    path = tmp_path / "m.safetensors"
    path.write_bytes(save(STATE, metadata={ck.CONFIG_KEY: text}))
    return path


@pytest.mark.parametrize("text,reason", [
    ("{not json", "Expecting property name"),
    ("[" * 100_000 + "]" * 100_000, "maximum recursion depth"),  # RecursionError in json.loads
    ('{"a": ' + "[" * 40 + "1" + "]" * 40 + "}", "nested deeper than 32"),
    ("[1, 2]", "config is a JSON list, not an object"),
    ('"name"', "config is a JSON str, not an object"),
    ("null", "config is a JSON NoneType, not an object"),
], ids=["bad-json", "recursion", "too-deep", "list", "string", "null"])
def test_an_invalid_config_in_the_header_is_a_one_line_checkpoint_error(tmp_path, text, reason):
    path = _with_config_text(tmp_path, text)
    with pytest.raises(CheckpointError, match="has an invalid config in its header") as exc:
        ck.load_checkpoint(path, {"name": "toy"})
    assert reason in str(exc.value) and "\n" not in str(exc.value) and len(str(exc.value)) < 400


def test_a_header_that_is_not_an_object_is_reported(tmp_path):
    body = b"[1, 2]"
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.load_checkpoint(path)


def test_a_full_disk_is_a_checkpoint_error_naming_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import pathlib

    path = ck.save_checkpoint(tmp_path / "m.safetensors", STATE, CONFIG)
    old = path.read_bytes()
    real_write = pathlib.Path.write_bytes

    def full(self, data):
        real_write(self, data[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(CheckpointError, match=rf"^cannot write checkpoint {path}: the disk is full; the previous"):
        ck.save_checkpoint(path, {"w": torch.zeros(2, 3), "b": torch.zeros(3)}, {**CONFIG, "steps": 9})
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert ck.load_checkpoint(path)[1] == CONFIG  # the old checkpoint, whole: weights and config agree


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
