"""`python -m bench run` against faults: foreign or mismatched --out, bad journal lines and manifests, a full disk,
a run interrupted in its report, failed cells retried, the lock file, ranks without samples, and the manifest.

Every run here is tiny (gmm2d, ddim and heun at NFE 4, 16 samples, one timed repetition); the report is replaced by
a stub that writes report/report.html, since what is tested is when the run makes it, not what it holds.
"""
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

import reference_models
from bench import dist, run
from bench.__main__ import main
from bench.dist import World
from bench.store import Journal, JournalError, RunLock, RunLocked, StoreError

ARGS = ["--models", "gmm2d", "--solvers", "ddim,heun", "--nfe", "4", "--samples", "16", "--repeats", "1", "--quiet"]
ROW = {"model": "gmm2d", "schedule": "vp", "prediction": "eps", "solver": "ddim", "nfe": 4, "seed": 0, "status": "ok"}


def bench_run(*extra) -> int:
    return main(["run", *ARGS, *extra])


def stub_report(made: list):
    def make(run_dir: Path) -> Path:
        made.append(Path(run_dir))
        (Path(run_dir) / "report").mkdir(exist_ok=True)
        (Path(run_dir) / "report" / "report.html").write_text("report")
        return Path(run_dir) / "report" / "report.html"

    return make


@pytest.fixture(autouse=True)
def made(monkeypatch) -> list:
    """The run directories whose report was made, in order."""
    out: list = []
    monkeypatch.setattr(run, "_make_report", stub_report(out))
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run; tests that change it work on a copy (`copy_of`)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(run, "_make_report", stub_report([]))
    try:
        assert bench_run("--out", str(out)) == 0
    finally:
        mp.undo()
    return out


def copy_of(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def refused(capsys, code: int, *needles: str) -> str:
    """The one-line error of a refused run, checked to hold every needle."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.mark.parametrize("name, content, needle", [
    ("notes.txt", b"my thesis", "holds no samplerbench run (no manifest.json)"),
    ("manifest.json", b'{"name": "another tool", "version": 3}', "is not a samplerbench manifest"),
    ("manifest.json", b"[1, 2, 3]", "is not a samplerbench manifest"),
    ("manifest.json", b"{oops", "is not readable JSON"),
])
def test_an_out_that_is_not_a_run_is_refused_and_left_untouched(tmp_path, capsys, made, name, content, needle):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(tmp_path)
    assert bench_run("--out", str(tmp_path)) == 2
    refused(capsys, 2, "error: argument --out:", needle)
    assert snapshot(tmp_path) == before and not (tmp_path / ".lock").exists() and not made


@pytest.mark.parametrize("change, needle", [
    (["--nfe", "6"], "nfe: [4] there, [6] here"),
    (["--seeds", "1"], "seeds: [0] there, [1] here"),
    (["--samples", "32"], 'samples: {"gmm2d":16} there, {"gmm2d":32} here'),
    (["--repeats", "2"], "repeats: 1 there, 2 here"),
    (["--solvers", "ddim"], 'solvers: ["ddim","heun"] there, ["ddim"] here'),
    (["--schedules", "ve"], 'schedules: ["vp"] there, ["ve"] here'),
])
def test_a_run_of_another_configuration_is_refused_naming_what_differs(finished, capsys, made, change, needle):
    before = snapshot(finished)
    assert bench_run("--out", str(finished), *change) == 2
    refused(capsys, 2, "holds a run of another configuration", needle)
    assert snapshot(finished) == before and not made


def test_the_same_configuration_resumes_and_failed_cells_are_rerun_only_with_retry_failed(finished, tmp_path, made):
    d = copy_of(finished, tmp_path)
    lines = (d / "results.jsonl").read_bytes().splitlines(keepends=True)
    rows = [json.loads(line) for line in lines]
    failed = next(i for i, r in enumerate(rows) if r["solver"] == "ddim")
    rows[failed].update(status="failed", message="boom")
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench_run("--out", str(d)) == 0
    assert len(Journal(d).rows) == len(rows)  # nothing rerun: a failed cell is a finished cell
    assert pd.read_parquet(d / "results.parquet").set_index("solver").status["ddim"] == "failed"
    assert bench_run("--out", str(d), "--retry-failed") == 0
    assert len(Journal(d).rows) == len(rows) + 1  # only the failed cell ran again; its new row wins
    assert pd.read_parquet(d / "results.parquet").set_index("solver").status.to_dict() == {"ddim": "ok", "heun": "ok"}
    assert len(json.loads((d / "manifest.json").read_text())["resumed"]) == 2 and made == [d, d]


def test_a_finished_run_without_its_report_gets_it_on_rerun_without_recomputing(tmp_path, monkeypatch, made):
    monkeypatch.chdir(tmp_path)
    assert bench_run() == 0
    [d] = list((tmp_path / "results" / "runs").iterdir())
    shutil.rmtree(d / "report")
    journal = (d / "results.jsonl").read_bytes()
    assert bench_run() == 0
    assert list((tmp_path / "results" / "runs").iterdir()) == [d]  # the same directory
    assert (d / "results.jsonl").read_bytes() == journal  # no cell ran again
    assert (d / "report" / "report.html").is_file() and made == [Path("results/runs") / d.name] * 2
    assert json.loads((d / "manifest.json").read_text())["report"] == "report/report.html"


def test_ctrl_c_in_the_report_then_the_same_command_makes_the_report(tmp_path, monkeypatch, made):
    monkeypatch.chdir(tmp_path)

    def interrupted(run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_make_report", interrupted)
    assert bench_run() == 130
    [d] = list((tmp_path / "results" / "runs").iterdir())
    journal = (d / "results.jsonl").read_bytes()
    assert not (d / ".lock").exists()
    monkeypatch.setattr(run, "_make_report", stub_report(made))
    assert bench_run() == 0
    assert list((tmp_path / "results" / "runs").iterdir()) == [d] and (d / "results.jsonl").read_bytes() == journal
    assert (d / "report" / "report.html").is_file()
    assert bench_run() == 0  # a run that is finished and reported is not reused: a new one is made
    assert len(list((tmp_path / "results" / "runs").iterdir())) == 2


@pytest.mark.parametrize("line, needle", [
    (b'{"model": "gmm2d", oops}\n', "is not JSON"),
    (b"\0" * 40 + b"\n", "holds NUL bytes"),
    (b"[1, 2]\n", "is not a JSON object"),
    (json.dumps({**ROW, "seed": 2**64 - 1}).encode() + b"\n", "seed = 18446744073709551615 does not fit"),
])
def test_a_bad_journal_line_is_a_one_line_error_naming_it(finished, tmp_path, capsys, made, line, needle):
    d = copy_of(finished, tmp_path)
    n = len((d / "results.jsonl").read_bytes().splitlines()) + 1
    with open(d / "results.jsonl", "ab") as f:
        f.write(line)
    before = snapshot(d)
    assert bench_run("--out", str(d)) == 2
    refused(capsys, 2, f"results.jsonl line {n}", needle, f"delete line {n}")
    assert snapshot(d) == before and not made
    with pytest.raises(JournalError, match=f"line {n}"):
        Journal(d)


def test_a_row_that_does_not_fit_the_schema_is_refused_before_it_is_written(tmp_path):
    journal = Journal(tmp_path)
    journal.append(ROW)
    before = (tmp_path / "results.jsonl").read_bytes()
    for bad in ({**ROW, "seed": 2**64 - 1}, {**ROW, "nfe": "four"}, {**ROW, "status": "done"}):
        with pytest.raises(StoreError, match="does not fit the results table"):
            journal.append(bad)
    assert (tmp_path / "results.jsonl").read_bytes() == before
    assert len(Journal(tmp_path).table()) == 1  # the directory stays readable


@pytest.mark.parametrize("target", ["results.jsonl", "results.csv", "manifest.json"])
def test_a_full_disk_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch, capsys, made, target):
    real_fsync = os.fsync

    def fsync(fd):
        if target in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    d = tmp_path / "run"
    assert bench_run("--out", str(d)) == 1
    refused(capsys, 1, f"cannot write {d / target}: No space left on device", "free some disk space")
    assert not (d / ".lock").exists() and not made
    for line in (d / "results.jsonl").read_bytes().splitlines() if (d / "results.jsonl").exists() else []:
        json.loads(line)  # no torn line left behind


def test_the_lock_file_is_removed_and_a_lock_on_the_removed_file_is_taken_again(tmp_path, monkeypatch, finished):
    assert not (finished / ".lock").exists()
    first = RunLock(tmp_path).__enter__()
    real_flock = fcntl.flock

    def flock(fd, op):  # the second process has opened .lock; the first one finishes before it locks
        if op & fcntl.LOCK_EX and first._fd is not None:
            first.__exit__(None, None, None)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with RunLock(tmp_path) as second:
        assert os.fstat(second._fd).st_ino == os.stat(tmp_path / ".lock").st_ino  # it holds the file at the path
        with pytest.raises(RunLocked):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()


def test_more_ranks_than_samples_is_refused_before_sampling(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dist, "init", lambda device: World(0, 1500))
    code = main(["run", "--models", "gmm2d", "--solvers", "ddim", "--nfe", "4", "--out", str(tmp_path / "run")])
    assert code == 2
    refused(capsys, 2, "1500 ranks but fewer samples per cell for gmm2d (1000)", "--samples 1500")
    assert not (tmp_path / "run").exists()


def test_the_manifest_records_what_the_run_used(finished):
    manifest = json.loads((finished / "manifest.json").read_text())
    config, device = manifest["config"], manifest["device"]
    assert config["samples"] == {"gmm2d": 16} and config["repeats"] == 1
    assert config["cache_dir"] == str(reference_models.cache_dir().resolve())
    assert device["cpu"] and device["cpu_count"] == os.cpu_count() and device["torch_threads"] >= 1
    for when in ("start", "end"):
        assert len(manifest["load_average"][when]) == 3
    assert manifest["finished"] and manifest["report"] == "report/report.html"


def test_the_help_says_timings_depend_on_load(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "wall_s is the median" in text and "--repeats" in text and "widens the spread" in text
    assert "do not depend on other load" not in text
