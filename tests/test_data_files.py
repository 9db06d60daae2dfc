"""Real data from --data (reference_models.data_files), FID statistics, the feature extractors' availability
(bench.quality.extractor_problem), cached real statistics, and the MNIST classifier's training path."""
import dataclasses
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bench import inception, quality
from reference_models import features
from reference_models.data_files import DataError, read_data


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _refused(match, fn, *args, **kwargs) -> str:
    """fn(...) raises DataError on one line matching `match`; returns the message."""
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and len(text) < 600
    return text


def _pixels(n=6, h=8, w=8, c=3, seed=0) -> np.ndarray:
    """uint8 NHWC images; the first one holds both 0 and 255."""
    px = np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    px[0, 0, 0], px[0, 0, 1] = 0, 255
    return px


def _png_folder(path, px, suffix=".png"):
    path.mkdir()
    for i, img in enumerate(px):
        mode = "L" if img.shape[-1] == 1 else "RGB"
        Image.fromarray(img[..., 0] if mode == "L" else img, mode).save(path / f"img{i:03d}{suffix}")
    (path / "notes.txt").write_text("not an image")
    return path


# --- the forms of --data ------------------------------------------------------------------------------------


def test_png_folder_reads_sorted_maps_0_255_exactly_and_ignores_other_files(tmp_path):
    px = _pixels()
    folder = _png_folder(tmp_path / "imgs", px)
    (folder / "img001.png").rename(folder / "img001.PNG")  # suffixes are case-insensitive
    real = read_data(folder, (3, 8, 8))
    assert (real.count, real.range, real.source) == (6, "0,255", str(folder))
    x = real.all()
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32
    want = torch.from_numpy(px).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(x, want, atol=1e-6, rtol=0)  # in name order
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, 1] == 1.0


def test_grey_folder_and_jpeg(tmp_path):
    px = _pixels(4, 10, 12, 1)
    real = read_data(_png_folder(tmp_path / "grey", px, ".JPEG"), (1, 10, 12))
    assert real.all().shape == (4, 1, 10, 12) and real.range == "0,255"
    rgb = read_data(_png_folder(tmp_path / "rgb", _pixels(3), ".jpg"), (3, 8, 8))
    assert rgb.count == 3 and rgb.all().abs().max() <= 1


def test_npz_nchw_nhwc_and_a_folder_of_the_same_pixels_agree_with_the_same_hash(tmp_path):
    px = _pixels()
    np.savez(tmp_path / "nhwc.npz", images=px)
    np.savez(tmp_path / "nchw.npz", px.transpose(0, 3, 1, 2))  # arr_0
    torch.save({"x": torch.from_numpy(px.transpose(0, 3, 1, 2).copy())}, tmp_path / "nchw.pt")
    reads = [read_data(p, (3, 8, 8)) for p in (tmp_path / "nhwc.npz", tmp_path / "nchw.npz", tmp_path / "nchw.pt",
                                                _png_folder(tmp_path / "imgs", px))]
    assert all(torch.equal(r.all(), reads[0].all()) for r in reads)
    assert len({r.sha256 for r in reads}) == 1
    other = np.array(px)
    other[3, 2, 2, 1] ^= 1
    np.savez(tmp_path / "other.npz", x=other)
    assert read_data(tmp_path / "other.npz", (3, 8, 8)).sha256 != reads[0].sha256


def test_one_channel_nhw_and_a_single_tensor_pt(tmp_path):
    px = _pixels(5, 28, 28, 1)[..., 0]
    torch.save(torch.from_numpy(px), tmp_path / "mnist.pth")
    real = read_data(tmp_path / "mnist.pth", (1, 28, 28))
    assert real.all().shape == (5, 1, 28, 28)
    assert torch.allclose(real.all()[:, 0], torch.from_numpy(px).float() / 127.5 - 1, atol=1e-6, rtol=0)


@pytest.mark.parametrize("values, detected, mapped", [
    ([0.0, 0.25, 1.0], "0,1", [-1.0, -0.5, 1.0]),
    ([-1.0, 0.5, 1.0], "-1,1", [-1.0, 0.5, 1.0]),
    ([0.0, 63.75, 255.0], "0,255", [-1.0, -0.5, 1.0]),
    ([0.2, 0.6, 0.8], "0,1", [-0.6, 0.2, 0.6]),  # never -1 or 1: detected from the values
])
def test_range_detection_and_mapping(tmp_path, values, detected, mapped):
    x = np.array(values, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    real = read_data(tmp_path / "d.npz", (1, 2, 2))
    assert real.range == detected
    assert torch.allclose(real.all()[:, 0, 0, 0], torch.tensor(mapped), atol=1e-6)


def test_integer_data_is_0_255_and_declared_ranges_are_honoured_or_refused(tmp_path):
    np.savez(tmp_path / "int.npz", x=np.array([[[[0, 1]]], [[[1, 0]]]], dtype=np.int64))
    assert read_data(tmp_path / "int.npz", (1, 1, 2)).range == "0,255"  # 0/1 integers are still pixels
    assert read_data(tmp_path / "int.npz", (1, 1, 2), data_range="0,1").all()[0, 0, 0].tolist() == [-1.0, 1.0]
    small = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 1, 2, 2)
    np.savez(tmp_path / "small.npz", x=small)
    declared = read_data(tmp_path / "small.npz", (1, 2, 2), data_range="0,255")
    assert declared.range == "0,255"
    assert torch.allclose(declared.all(), torch.from_numpy(small) / 127.5 - 1)
    as_signed = read_data(tmp_path / "small.npz", (1, 2, 2), data_range="-1,1")  # auto would say 0,1
    assert as_signed.range == "-1,1" and torch.equal(as_signed.all(), torch.from_numpy(small))
    assert as_signed.sha256 != read_data(tmp_path / "small.npz", (1, 2, 2)).sha256
    np.savez(tmp_path / "big.npz", x=small * 2)
    _refused(r"values span \[0, 2\], outside the declared range 0,1", read_data, tmp_path / "big.npz", (1, 2, 2),
             data_range="0,1")
    text = _refused("unknown data range '0-1'", read_data, tmp_path / "small.npz", (1, 2, 2), data_range="0-1")
    assert all(c in text for c in ("auto", "0,255", "0,1", "-1,1"))
    np.savez(tmp_path / "std.npz", x=np.linspace(-3, 3, 8, dtype=np.float32).reshape(2, 1, 2, 2))
    _refused(r"values span \[-3, 3\], which fits none of the ranges 0,255, 0,1, -1,1", read_data,
             tmp_path / "std.npz", (1, 2, 2))
    np.savez(tmp_path / "over.npz", x=np.array([[[[0, 300]]]], dtype=np.int32))
    _refused("fits none", read_data, tmp_path / "over.npz", (1, 1, 2))


def test_low_dimensional_data_is_used_as_is(tmp_path):
    pts = np.random.default_rng(1).normal(0, 3, size=(40, 2))
    np.savez(tmp_path / "pts.npz", samples=pts, labels=np.zeros(40))
    real = read_data(tmp_path / "pts.npz", (2,))
    assert real.range == "as-is" and real.noun == "samples"
    assert torch.equal(real.all(), torch.from_numpy(pts))
    _refused("low-dimensional data .* used as is: pass auto", read_data, tmp_path / "pts.npz", (2,), data_range="0,1")
    _refused(r"has 40 samples; a cell needs 41 \(--samples\)", real.draw, 41, _gen())


# --- every bad input is one line naming what is valid --------------------------------------------------------


def test_bad_inputs_are_one_line_errors_naming_the_valid_forms(tmp_path):
    forms = "a folder of PNG/JPEG images"
    np.savez(tmp_path / "wrong.npz", x=np.zeros((5, 3, 16, 16), np.uint8))
    text = _refused(r"data shaped \(5, 3, 16, 16\) does not fit the model's samples \(3, 8, 8\)", read_data,
                    tmp_path / "wrong.npz", (3, 8, 8))
    assert "(N, 3, 8, 8)" in text and "NHWC (N, 8, 8, 3)" in text
    assert forms in _refused("no data at", read_data, tmp_path / "missing", (3, 8, 8))
    (tmp_path / "d.csv").write_text("1,2\n")
    assert forms in _refused(r"unsupported data file .*d\.csv \(suffix \.csv\)", read_data, tmp_path / "d.csv",
                             (3, 8, 8))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    assert forms in _refused("cannot read .*bad.npz", read_data, tmp_path / "bad.npz", (3, 8, 8))
    (tmp_path / "bad.pt").write_bytes(b"\x00\x01garbage")
    assert forms in _refused("cannot read .*bad.pt: not plain tensors", read_data, tmp_path / "bad.pt", (3, 8, 8))
    np.savez(tmp_path / "keys.npz", a=np.zeros((2, 3, 8, 8)), b=np.zeros(2))
    _refused(r"holds a, b; expected one array, or one under x, data, images, samples, arr_0", read_data,
             tmp_path / "keys.npz", (3, 8, 8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    _refused("no images in .*PNG/JPG/JPEG", read_data, tmp_path / "empty", (3, 8, 8))
    folder = _png_folder(tmp_path / "big", _pixels(2, 16, 16))
    _refused(r"img000.png is 16x16 pixels but the model's samples are 8x8", read_data, folder, (3, 8, 8))
    _refused("a folder of images needs samples shaped", read_data, folder, (2,))
    (folder / "img000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _refused("cannot read image .*img000.png", read_data, folder, (3, 16, 16))
    _refused("sample shape must be a tuple of positive integers", read_data, tmp_path / "wrong.npz", (3, 0, 8))


class _Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.filterwarnings("ignore")
def test_pickled_objects_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    forms = "a folder of PNG/JPEG images"
    assert forms in _refused("refusing .*evil.pt: it holds pickled objects .*GLOBAL", read_data, tmp_path / "evil.pt",
                             (2,))
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(_Payload(marker)))  # a bare pickle
    assert forms in _refused("cannot read .*evil.pth: not plain tensors", read_data, tmp_path / "evil.pth", (2,))
    np.savez(tmp_path / "evil.npz", x=np.array([_Payload(marker), None], dtype=object))
    assert forms in _refused("refusing .*evil.npz: it holds pickled objects", read_data, tmp_path / "evil.npz", (2,))
    assert not marker.exists()


# --- draws -----------------------------------------------------------------------------------------------------


def test_draw_is_seeded_distinct_and_refuses_more_than_there_is(tmp_path):
    px = np.arange(50, dtype=np.float32)[:, None, None, None] / 49 * np.ones((1, 1, 2, 2), np.float32)
    np.savez(tmp_path / "d.npz", x=px)
    real = read_data(tmp_path / "d.npz", (1, 2, 2))
    a, b, c = real.draw(20, _gen(3)), real.draw(20, _gen(3)), real.draw(20, _gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(torch.unique(a[:, 0, 0, 0])) == 20
    every = real.draw(50, _gen(5))[:, 0, 0, 0]
    assert torch.equal(every.sort().values, real.all()[:, 0, 0, 0].sort().values)
    _refused(r"d\.npz has 50 images; a cell needs 200 \(--samples\)", real.draw, 200, _gen())


# --- FID statistics --------------------------------------------------------------------------------------------


def test_fid_statistics_files(tmp_path):
    f = np.random.default_rng(2).normal(size=(30, 4))
    np.savez(tmp_path / "stats.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    real = read_data(tmp_path / "stats.npz", (3, 32, 32))
    assert real.count == 0 and real.fid_stats.dim == 4 and real.fid_stats.sigma.dtype == np.float64
    assert np.array_equal(real.fid_stats.mu, f.mean(0))
    _refused("holds FID statistics .* no samples", real.draw, 2, _gen())
    np.savez(tmp_path / "s2.npz", mu=np.zeros(4), sigma=np.zeros((4, 3)))
    _refused(r"mu shaped \(F,\) and sigma \(F, F\), got mu \(4,\) and sigma \(4, 3\)", read_data,
             tmp_path / "s2.npz", (3, 32, 32))
    np.savez(tmp_path / "s3.npz", mu=np.array([0.0, np.nan]), sigma=np.eye(2))
    _refused("NaN or Inf", read_data, tmp_path / "s3.npz", (3, 32, 32))
    np.savez(tmp_path / "s4.npz", mu=np.zeros(2))
    _refused("need both mu and sigma", read_data, tmp_path / "s4.npz", (3, 32, 32))


def test_frechet_from_stats_equals_frechet_of_the_features():
    g = np.random.default_rng(3)
    real = g.normal(size=(200, 6)) @ g.normal(size=(6, 6))
    fake = g.normal(0.3, 1.2, size=(150, 6))
    direct = quality.Frechet(torch.from_numpy(real))(fake)
    from_stats = quality.Frechet.from_stats(real.mean(0), np.cov(real, rowvar=False))(fake)
    assert direct > 0.1 and from_stats == pytest.approx(direct, abs=1e-8, rel=0)
    with pytest.raises(ValueError, match=r"features are shaped \(150, 5\) but the real statistics have 6 features"):
        quality.Frechet.from_stats(real.mean(0), np.cov(real, rowvar=False))(fake[:, :5])
    with pytest.raises(ValueError, match=r"mu shaped \(F,\) and sigma \(F, F\)"):
        quality.Frechet.from_stats(np.zeros(6), np.eye(5))


# --- feature extractors: which shapes have one, cached real statistics -----------------------------------------


@pytest.fixture
def no_inception(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    return inception.hub_weights_path()


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 64, 64)])
def test_extractor_problem_without_inception_weights_says_where_to_put_them(no_inception, shape):
    text = quality.extractor_problem(shape)
    assert text.startswith(f"no FID/KID for {shape} images") and "\n" not in text
    assert no_inception.name in text and str(no_inception.parent) in text and inception.url() in text
    assert inception.WEIGHTS_ENV in text
    with pytest.raises(FileNotFoundError) as info:  # the harness path: a ValueError too, with the same line
        quality.sample_features(torch.zeros(2, *shape))
    assert isinstance(info.value, ValueError) and str(info.value) == text
    no_inception.parent.mkdir(parents=True)
    no_inception.write_bytes(b"present")
    assert quality.extractor_problem(shape) is None


def test_extractor_problem_for_other_shapes(tmp_path, no_inception):
    text = quality.extractor_problem((2, 5, 5))
    assert "(2, 5, 5)" in text and "(1, 8, 8)" in text and "(1, 28, 28)" in text and "(3, H, W) of any size" in text
    assert quality.extractor_problem((1, 8, 8)) is None
    assert "given" in quality.extractor_problem((3, 8, 8), inception_weights=tmp_path / "nope.pth")
    mnist = quality.extractor_problem((1, 28, 28), cache_dir=tmp_path)
    assert "MNIST" in mnist and "not on disk" in mnist and "download=True" in mnist
    raw = tmp_path / "datasets" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in features.MNIST_FILES:
        (raw / name).write_bytes(b"")
    assert quality.extractor_problem((1, 28, 28), cache_dir=tmp_path) is None


@pytest.fixture(scope="module")
def digit_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    features.train_classifier(path, epochs=2, progress=False)
    return path


def test_real_statistics_are_cached_by_content(digit_cache, tmp_path):
    from reference_models import digits

    x, _ = digits.test_split()
    first, hit1 = quality.real_statistics(x[:100], cache_dir=digit_cache)
    again, hit2 = quality.real_statistics(x[:100].clone(), cache_dir=digit_cache)
    assert (hit1, hit2) == (False, True) and torch.equal(first, again)
    assert first.shape == (100, 64) and first.dtype == torch.float64
    changed = x[:100].clone()
    changed[7, 0, 3, 3] = -changed[7, 0, 3, 3] + 0.5
    other, hit3 = quality.real_statistics(changed, cache_dir=digit_cache)
    assert not hit3 and not torch.equal(other, first)
    assert torch.allclose(quality.sample_features(x[:100], cache_dir=digit_cache), first, atol=1e-6)
    np.savez(tmp_path / "digits.npz", x=((x[:100].numpy() + 1) * 127.5).round().astype(np.uint8))
    real = read_data(tmp_path / "digits.npz", (1, 8, 8))
    from_file, hit4 = quality.real_statistics(real, cache_dir=digit_cache)
    assert from_file.shape == (100, 64) and hit4 is False
    assert quality.real_statistics(real, cache_dir=digit_cache)[1] is True
    assert len(list((digit_cache / "fidelity").glob("real-*.safetensors"))) == 3


# --- the MNIST classifier's training path, on synthetic 1x28x28 data ---------------------------------------------


def _squares(n, seed):
    """Class k: a bright 4x4 square at one of 10 places (2 rows x 5 columns), jittered by a pixel, on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = -1 + 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    jitter = torch.randint(-1, 2, (n, 2), generator=g)
    for i in range(n):
        r = 5 + 12 * int(y[i] // 5) + int(jitter[i, 0])
        c = 2 + 5 * int(y[i] % 5) + int(jitter[i, 1])
        x[i, 0, r:r + 4, c:c + 4] += 2
    return x.clamp(-1, 1), y


def test_mnist_classifier_learns_a_synthetic_task_and_not_shuffled_labels():
    x, y = _squares(600, 0)
    xt, yt = _squares(300, 1)
    lr = features.MNIST_TRAIN["lr"]
    net = features.fit_classifier(x, y, features.MNIST_ARCH, epochs=3, batch_size=32, lr=lr, seed=0)
    assert features.accuracy(net, xt, yt) >= 0.9
    shuffled = y[torch.randperm(len(y), generator=_gen(9))]
    control = features.fit_classifier(x, shuffled, features.MNIST_ARCH, epochs=3, batch_size=32, lr=lr, seed=0)
    assert features.accuracy(control, xt, yt) < 0.5


def test_mnist_features_end_to_end_with_a_synthetic_training_set(tmp_path, monkeypatch):
    spec = features.CLASSIFIERS["mnist"]
    synthetic = dataclasses.replace(spec, train={**spec.train, "epochs": 3, "batch_size": 32},
                                    splits=lambda cache_dir=None: (*_squares(400, 2), *_squares(200, 3)))
    monkeypatch.setitem(features.CLASSIFIERS, "mnist", synthetic)
    assert quality.extractor_problem((1, 28, 28), cache_dir=tmp_path) is not None  # no MNIST here
    path = features.train_classifier(tmp_path, progress=False, dataset="mnist")
    assert path == features.classifier_path(tmp_path, "mnist") and path.name == "mnist-cnn.safetensors"
    _, config = features.load_classifier(tmp_path, train=False, dataset="mnist")
    assert config["test_accuracy"] >= 0.9 and config["name"] == "mnist-cnn"
    assert quality.extractor_problem((1, 28, 28), cache_dir=tmp_path) is None  # the cached classifier suffices
    xs, _ = _squares(20, 4)
    f = quality.sample_features(xs, cache_dir=tmp_path)
    assert f.shape == (20, 64) and f.dtype == torch.float64
    noise = torch.rand(20, 1, 28, 28, generator=_gen(5)) * 2 - 1
    fid_real = quality.fid_kid(xs, _squares(20, 6)[0], cache_dir=tmp_path)["fid"]
    fid_noise = quality.fid_kid(noise, _squares(20, 6)[0], cache_dir=tmp_path)["fid"]
    assert fid_real < fid_noise / 3
    with pytest.raises(ValueError, match="unknown classifier dataset 'cifar'; valid: digits, mnist"):
        features.classifier_path(tmp_path, "cifar")



def _idx(path, array: np.ndarray) -> None:
    """An MNIST idx file (big-endian magic: 0, 0, dtype 0x08 = uint8, number of axes; then the sizes)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_splits_read_mnist_files_from_the_cache(tmp_path):
    raw = tmp_path / "datasets" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(4)
    want = {}
    for split, n in (("train", 12), ("t10k", 5)):
        want[split] = g.integers(0, 256, (n, 28, 28)), g.integers(0, 10, n)
        _idx(raw / f"{split}-images-idx3-ubyte", want[split][0])
        _idx(raw / f"{split}-labels-idx1-ubyte", want[split][1])
    x, y, xt, yt = features.CLASSIFIERS["mnist"].splits(tmp_path)
    assert x.shape == (12, 1, 28, 28) and xt.shape == (5, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.from_numpy(want["train"][0]).float() / 127.5 - 1)
    assert y.tolist() == want["train"][1].tolist() and yt.tolist() == want["t10k"][1].tolist()
