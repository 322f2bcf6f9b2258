"""`drcl-fast eval`: released features files, .npz/.pt files, metrics.json, PR curves, errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.io as sio
import torch

from drcl_fast.cli import main
from drcl_fast.retrieval import cpp, evaluate_directions

RESULT_LINE = r"^test resutls@{k}: - mean: \d\.\d{{5}} - detail:(\d\.\d{{5}},){{{n}}}$"


def modalities(seed: int, multilabel: bool, sizes=(30, 30, 25)):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 8))
    out = []
    for n in sizes:
        if multilabel:
            labels = (rng.random((n, 4)) < 0.4).astype(np.float64)
            labels[np.arange(n), rng.integers(0, 4, n)] = 1.0
            x = labels @ centres
        else:
            labels = rng.integers(0, 4, n)
            x = centres[labels]
        out.append(((x + rng.normal(scale=1.5, size=x.shape)).astype(np.float32), labels))
    return out


def write_released(folder, dataset, mods):
    folder.mkdir(parents=True, exist_ok=True)
    for k, (x, y) in enumerate(mods):  # as the trainer (and the released code) saves them
        sio.savemat(folder / f"{dataset}_{k}.mat", {"test_fea": x, "test_lab": y, "test_pred": np.zeros((len(x), 4))})


def test_released_layout_all_directions(tmp_path, capsys):
    mods = modalities(0, multilabel=False)
    write_released(tmp_path / "features", "toy", mods)
    out = tmp_path / "run"
    assert main(["eval", "--features_dir", str(tmp_path / "features"), "--datasets", "toy", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len(re.findall(RESULT_LINE.format(k="all", n=6), printed, re.M)) == 1, printed
    assert len(re.findall(RESULT_LINE.format(k="50", n=6), printed, re.M)) == 1
    assert "MAP@all" in printed and "query \\ gallery" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"map_all", "map_50"}
    embeddings, labels = [x for x, _ in mods], [y for _, y in mods]
    for key, k in [("map_all", None), ("map_50", 50)]:
        expected = evaluate_directions(embeddings, labels, ["0", "1", "2"], k=k, backend="torch")
        assert metrics[key]["directions"] == pytest.approx(expected.directions, abs=1e-12)
        assert metrics[key]["mean"] == pytest.approx(expected.mean, abs=1e-12)
        line = f"test resutls@{'all' if k is None else k}: - mean: {expected.mean:.5f} - detail:"
        assert line + "".join(f"{v:.5f}," for v in expected.directions.values()) in printed


def test_known_dataset_names_and_quiet(tmp_path, capsys):
    write_released(tmp_path, "wiki", modalities(1, multilabel=False, sizes=(20, 20)))
    assert main(["eval", "--features_dir", str(tmp_path), "--datasets", "wiki", "--out", str(tmp_path),
                 "--quiet", "--k", "all", "5", "--backend", "torch"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("test resutls@5: - mean:") and captured.err == ""
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"map_all", "map_5"}
    assert list(metrics["map_all"]["directions"]) == ["image->text", "text->image"]  # as training names them


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=pytest.mark.skipif(
    not cpp.AVAILABLE, reason="drcl_fast._map_cpp is not built")), "torch"])
def test_npz_and_pt_files_multilabel_with_pr_curves(tmp_path, capsys, backend):
    (a, ya), (b, yb), _ = modalities(2, multilabel=True)
    np.savez(tmp_path / "img.npz", embeddings=a, labels=ya)
    torch.save({"test_fea": torch.from_numpy(b), "test_lab": torch.from_numpy(yb)}, tmp_path / "txt.pt")
    plot = tmp_path / "curves" / "pr.png"
    argv = ["eval", "--files", str(tmp_path / "img.npz"), str(tmp_path / "txt.pt"), "--names", "img", "txt",
            "--backend", backend, "--pr_plot", str(plot), "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    rows = plot.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == "direction,cutoff,precision,recall,queries"
    assert {r.split(",")[0] for r in rows[1:]} == {"img->txt", "txt->img"}
    assert rows[-1].startswith("txt->img,30,") and rows[-1].split(",")[3] == "1.000000"  # full recall at the end
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected = evaluate_directions([a, b], [ya, yb], ["img", "txt"], backend="torch")
    assert metrics["map_all"]["directions"] == pytest.approx(expected.directions, abs=1e-12)
    # A second run refuses to replace the files, then replaces them when told to.
    capsys.readouterr()
    assert "--overwrite" in fails_with(argv, capsys)
    assert main(argv + ["--overwrite", "--quiet"]) == 0


def fails_with(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("drcl-fast eval: error: ") and "Traceback" not in err
    return err


def test_errors_are_reported_without_traceback(tmp_path, capsys):
    write_released(tmp_path, "toy", modalities(3, multilabel=False)[:1])
    assert "found 1 file(s) named toy_<k>" in fails_with(["eval", "--features_dir", str(tmp_path), "--datasets", "toy"], capsys)
    np.savez(tmp_path / "bad.npz", x=np.ones((3, 2)))
    assert "expected test_fea and test_lab" in fails_with(
        ["eval", "--files", str(tmp_path / "bad.npz"), str(tmp_path / "toy_0.mat")], capsys)
    assert "does not exist" in fails_with(["eval", "--files", str(tmp_path / "no.mat"), str(tmp_path / "toy_0.mat")], capsys)
    assert "--k takes 'all' or positive ints" in fails_with(
        ["eval", "--files", str(tmp_path / "toy_0.mat"), str(tmp_path / "toy_0.mat"), "--k", "0"], capsys)
    assert "--names lists 1 names for 2 modalities" in fails_with(
        ["eval", "--files", str(tmp_path / "toy_0.mat"), str(tmp_path / "toy_0.mat"), "--names", "a"], capsys)
    np.savez(tmp_path / "wide.npz", embeddings=np.ones((4, 3)), labels=np.zeros(4))
    assert "direction 0->1: query embeddings have width 8 but gallery embeddings have width 3" in fails_with(
        ["eval", "--files", str(tmp_path / "toy_0.mat"), str(tmp_path / "wide.npz"), "--quiet"], capsys)
