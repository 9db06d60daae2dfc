"""The digit feature extractor (accuracy, determinism, torch-fidelity registration) and the FID/KID plumbing."""
import pytest
import torch

from bench import quality
from bench.quality import fid_kid
from reference_models import digits, features


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache holding the digit classifier, trained for real with its default settings."""
    path = tmp_path_factory.mktemp("cache")
    features.train_classifier(path, progress=False)
    return path


def test_classifier_meets_its_accuracy(cache):
    net, config = features.load_classifier(cache, train=False)
    x, y = digits.test_split()
    acc = features.accuracy(net, x, y)
    assert acc >= features.MIN_ACCURACY == 0.95
    assert acc == pytest.approx(config["test_accuracy"], abs=1e-12)


def test_classifier_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    a, b, c = (load_file(features.train_classifier(epochs=1, seed=s, progress=False, out_path=tmp_path / f"{i}.st"))
               for i, s in enumerate((0, 0, 1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_missing_classifier_with_train_false_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="digit classifier is not trained"):
        features.load_classifier(tmp_path, train=False)


def test_digit_fid_orders_real_above_noise(cache):
    test, _ = digits.test_split()
    train, _ = digits.train_split()
    noise = torch.randn(len(test), 1, 8, 8, generator=_gen(1))
    real = fid_kid(train, test, cache_dir=cache)
    rand = fid_kid(noise, test, cache_dir=cache)
    same = fid_kid(test, test, cache_dir=cache)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert real["fid"] < rand["fid"] / 10 and real["kid"] < rand["kid"] / 10
    assert features.EXTRACTOR_NAME in __import__("torch_fidelity").registry.FEATURE_EXTRACTORS_REGISTRY


def test_real_features_are_cached_by_name_and_checked_against_the_data(cache, monkeypatch):
    test, _ = digits.test_split()
    samples = digits.draw(digits.train_split()[0], 300, _gen(2))
    calls = []
    real_features = quality._features
    monkeypatch.setattr(quality, "_features", lambda x, e, d: calls.append(len(x)) or real_features(x, e, d))
    first = fid_kid(samples, test, cache_dir=cache, real_cache_name="digits-test")
    second = fid_kid(samples, test, cache_dir=cache, real_cache_name="digits-test")
    assert first == second
    assert calls == [300, len(test), 300]  # the real features were computed once
    third = fid_kid(samples, test[:200], cache_dir=cache, real_cache_name="digits-test")
    assert calls[3:] == [300, 200] and third != first  # other data under the same name: recomputed
    assert len(list((cache / "fidelity").glob("digits-test-*.safetensors"))) == 1


def test_fid_rejects_shapes_without_an_extractor_and_bad_input(cache):
    with pytest.raises(ValueError, match=r"no FID feature extractor for samples shaped \(1, 4, 4\)"):
        fid_kid(torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 4, 4), cache_dir=cache)
    with pytest.raises(ValueError, match="differ in shape"):
        fid_kid(torch.zeros(4, 1, 8, 8), torch.zeros(4, 3, 32, 32), cache_dir=cache)
    with pytest.raises(ValueError, match="unknown feature layer 'x'"):
        fid_kid(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), cache_dir=cache, feature_layer="x")


def test_inception_path_with_a_local_weights_file(tmp_path, monkeypatch):
    # Inception-v3's weights cannot be downloaded here: make a randomly initialised weights file
    # and pass it through torch-fidelity's weights-path option (the environment variable route).
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    class _Unloaded(inc.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None if state_dict is None else super().load_state_dict(state_dict, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(inc, "load_state_dict_from_url", lambda *a, **k: None)
        torch.manual_seed(0)
        weights = tmp_path / "inception.pth"
        torch.save(_Unloaded("inception-v3-compat", ["64"]).state_dict(), weights)
    monkeypatch.setenv(quality.INCEPTION_WEIGHTS_ENV, str(weights))
    g = _gen(3)
    a = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(6, 3, 32, 32, generator=g) * 0.2 - 1  # nearly black images
    same = fid_kid(a, a, cache_dir=tmp_path, feature_layer="64")
    diff = fid_kid(b, a, cache_dir=tmp_path, feature_layer="64")
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert diff["fid"] > 1e-3 and torch.isfinite(torch.tensor(diff["kid"]))
    monkeypatch.setenv(quality.INCEPTION_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError):
        fid_kid(a, a, cache_dir=tmp_path, feature_layer="64")
