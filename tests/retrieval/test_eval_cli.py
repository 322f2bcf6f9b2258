"""`drcl-fast eval`: released features files, .npz/.pt files, metrics.json, PR curves, errors."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import scipy.io as sio
import torch

from drcl_fast.cli import main
from drcl_fast.errors import DataError
from drcl_fast.retrieval import cpp, evaluate_directions
from drcl_fast.retrieval.eval_cli import load_embeddings
from tests.support import fails_with

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
    not cpp.AVAILABLE, reason="drcl_fast.retrieval._map_cpp is not built")), "torch"])
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


class Opaque:
    """A class of the test's own: weights-only loading refuses to rebuild it."""


def pickled(path, value):
    with open(path, "wb") as fh:
        pickle.dump(value, fh)


def truncated(path, write):
    write(path)
    path.write_bytes(path.read_bytes()[:-40])


GOOD = {"embeddings": np.ones((3, 2), np.float32), "labels": np.zeros(3)}
# name -> (writer, what the message says about the file)
MALFORMED = {
    "a.pt": (lambda p: torch.save([torch.ones(2)], p), "holds a list, not a dict of tensors"),
    "b.pt": (lambda p: torch.save({"embeddings": Opaque(), "labels": torch.zeros(3)}, p),
             "cannot be read as a .pt file of tensors (Unsupported global"),
    "c.pt": (lambda p: pickled(p, Opaque()), "cannot be read as a .pt file of tensors"),
    "d.pt": (lambda p: torch.save({"embeddings": "abc", "labels": [1, 2]}, p), "'embeddings' is not numeric"),
    "e.pt": (lambda p: torch.save({"embeddings": [[1.0], [2.0, 3.0]], "labels": [1, 2]}, p),
             "'embeddings' is not an array"),
    "f.pt": (lambda p: torch.save({"embeddings": torch.tensor(1.0), "labels": torch.ones(1, 3)}, p),
             "'embeddings' has shape (); expected (n, d)"),
    "g.pt": (lambda p: torch.save({1: torch.ones(2)}, p), "has keys ['1']; expected test_fea"),
    "h.pt": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)), "cannot be read as a .pt file"),
    "i.pt": (lambda p: truncated(p, lambda q: torch.save({k: torch.from_numpy(v) for k, v in GOOD.items()}, q)),
             "cannot be read as a .pt file"),
    "j.pt": (lambda p: p.write_bytes(b""), "cannot be read as a .pt file of tensors (EOFError)"),
    "a.npz": (lambda p: truncated(p, lambda q: np.savez(q, **GOOD)), "File is not a zip file"),
    "b.npz": (lambda p: np.savez(p, embeddings=np.array([Opaque()]), labels=np.zeros(1)),
              "Object arrays cannot be loaded when allow_pickle=False"),
    "c.npz": (lambda p: np.savez(p, embeddings=np.array([["x", "y"]]), labels=np.zeros(1)),
              "'embeddings' is not numeric (dtype <U1)"),
    "d.npz": (lambda p: pickled(p, {"embeddings": 1}), "contains pickled (object) data"),
    "a.mat": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(500)), "cannot read"),
    "b.mat": (lambda p: truncated(p, lambda q: sio.savemat(q, GOOD)), "truncated?"),
    "c.mat": (lambda p: sio.savemat(p, {"embeddings": np.array([["a", "bb"]], dtype=object), "labels": [0]}),
              "'embeddings' is not numeric (dtype object)"),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch.load of a plain pickle.dump file
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_files_end_in_data_error(tmp_path, capsys, name):
    write, reason = MALFORMED[name]
    bad, good = tmp_path / name, tmp_path / "good.npz"
    write(bad)
    np.savez(good, **GOOD)
    advice = {".pt": "torch.save(", ".npz": "numpy.savez(", ".mat": "scipy.io.savemat("}[bad.suffix]
    with pytest.raises(DataError) as error:
        load_embeddings(bad)
    message = str(error.value)
    assert str(bad) in message and reason in message and f"write the file again with {advice}" in message
    assert message in fails_with(["eval", "--files", str(good), str(bad), "--quiet"], capsys)


def test_bfloat16_pt_file_is_read_exactly(tmp_path):
    x = torch.randn(5, 3).to(torch.bfloat16)
    torch.save({"embeddings": x, "labels": torch.arange(5)}, tmp_path / "x.pt")
    features, labels = load_embeddings(tmp_path / "x.pt")
    assert features.dtype == np.float32 and torch.equal(torch.from_numpy(features), x.float())
    assert labels.tolist() == list(range(5))


def test_eval_of_a_runs_files_reproduces_its_metrics_bit_for_bit(mfeat, tiny_config, tmp_path):
    """The run scores the embeddings it writes; `drcl-fast eval` and the Python API on those files give
    its metrics.json exactly (the .mat files load column-major, which once rounded the scores apart)."""
    from drcl_fast import DRCL
    config = tiny_config.replace(hidden_shape=256, output_shape=128, epochs=6)
    model = DRCL(config).fit(mfeat)
    run = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert main(["eval", "--features_dir", str(tmp_path / "out" / "features"), "--datasets", "mfeat",
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == run
    files = [load_embeddings(tmp_path / "out" / "features" / f"mfeat_{k}.mat") for k in range(6)]
    for k, (features, _) in enumerate(files):
        assert np.array_equal(features, model.result.rsc[k].test_embeddings)
    again = evaluate_directions([torch.as_tensor(x) for x, _ in files], [y for _, y in files], mfeat.modalities)
    assert again.directions == run["map_all"]["directions"] and again.mean == run["map_all"]["mean"]


# ---------------------------------------------------------------- --metrics (drcl_fast/retrieval/metrics.py)

def write_npz(folder, mods, names):
    paths = []
    for name, (x, y) in zip(names, mods):
        paths.append(str(folder / f"{name}.npz"))
        np.savez(paths[-1], embeddings=x, labels=y)
    return paths


def test_metrics_flag_prints_and_saves_every_metric(tmp_path, capsys):
    from drcl_fast.retrieval.metrics import evaluate_metrics
    names = ["img", "txt", "aud"]
    mods = modalities(4, multilabel=True, sizes=(30, 30, 30))   # paired: the same row count everywhere
    asked = ["map@all", "map@5", "p@5", "r@5", "ndcg@5", "ir@1", "rsum"]
    argv = ["eval", "--files", *write_npz(tmp_path, mods, names), "--names", *names, "--metrics", *asked,
            "--backend", "torch", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    expected = evaluate_metrics([x for x, _ in mods], [y for _, y in mods], names, asked, backend="torch")
    prefixes = ["test resutls@all:", "test resutls@5:", "P@5:", "R@5:", "NDCG@5:", "IR@1:", "rsum:"]
    for prefix, result in zip(prefixes, expected.values()):
        detail = "".join(f"{v:.5f}," for v in result.directions.values())
        line = f"{prefix} - mean: {result.mean:.5f} - detail:{detail}"
        assert printed.count(line + "\n") == 1, (line, printed)
    titles = [line.split("  (mean")[0] for line in printed.splitlines() if "  (mean " in line]
    assert titles == ["MAP@all", "MAP@5", "P@5", "R@5", "NDCG@5", "IR@1", "rsum"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics) == ["map_all", "map_5", "precision_5", "recall_5", "ndcg_5", "instance_recall_1", "rsum"]
    for key, result in zip(metrics, expected.values()):
        assert metrics[key] == {"mean": result.mean, "directions": result.directions}
    # MAP keeps the schema and values it has without --metrics.
    assert metrics["map_all"]["directions"] == evaluate_directions(
        [x for x, _ in mods], [y for _, y in mods], names, backend="torch").directions
    assert main(argv + ["--overwrite", "--quiet"]) == 0
    assert [line.split(" - mean")[0] for line in capsys.readouterr().out.splitlines()] == prefixes


def test_k_is_short_for_map_metrics(tmp_path, capsys):
    files = write_npz(tmp_path, modalities(5, multilabel=False, sizes=(20, 20)), ["a", "b"])
    out = tmp_path / "run"
    assert main(["eval", "--files", *files, "--k", "5", "all", "--metrics", "map@all", "p@3", "map@5",
                 "--out", str(out), "--quiet"]) == 0
    assert list(json.loads((out / "metrics.json").read_text())) == ["map_all", "precision_3", "map_5"]
    capsys.readouterr()
    assert "--k 5 asks for map@5 but --metrics asks for no MAP" in fails_with(
        ["eval", "--files", *files, "--k", "5", "--metrics", "p@5"], capsys)
    assert "--k all asks for map@all but --metrics asks for map@50" in fails_with(
        ["eval", "--files", *files, "--k", "all", "--metrics", "map@50"], capsys)


def test_metrics_flag_errors(tmp_path, capsys):
    files = write_npz(tmp_path, modalities(6, multilabel=False, sizes=(20, 12)), ["a", "b"])
    err = fails_with(["eval", "--files", *files, "--metrics", "map@all", "p@all"], capsys)
    assert "unknown metric 'p@all'" in err and "map@all, map@K, p@K, r@K, ndcg@K, ir@K, rsum" in err
    assert "needs paired data" in fails_with(["eval", "--files", *files, "--metrics", "rsum"], capsys)
    assert "(0 20, 1 12)" in fails_with(["eval", "--files", *files, "--metrics", "map@all", "ir@1"], capsys)
    assert "direction 0->1: P@15 needs at least 15 gallery items, the gallery has 12" in fails_with(
        ["eval", "--files", *files, "--metrics", "p@15"], capsys)
    assert "cannot be combined with --shard_gallery" in fails_with(
        ["eval", "--files", *files, "--metrics", "p@5", "--shard_gallery"], capsys)
