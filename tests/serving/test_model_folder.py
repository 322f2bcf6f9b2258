"""The model a run keeps: written by every run, loaded in a process that never trained, encoding the test
split to the bits the run wrote; `drcl-fast index` and `search` against a brute-force ranking; damaged,
truncated and newer folders refused with what to do."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drcl_fast import DRCL, load_model
from drcl_fast.cli import main
from drcl_fast.config import DRCLConfig
from drcl_fast.data.container import MultiModalData, Split
from drcl_fast.data.generic import save_generic
from drcl_fast.data.mfeat import load_mfeat_raw
from drcl_fast.errors import ModelError, OutputExistsError
from drcl_fast.outputs import load_features
from drcl_fast.serving import GalleryIndex, build_index
from drcl_fast.serving.model_folder import FORMAT_VERSION, MANIFEST, WEIGHTS
from drcl_fast.training.trainer import fit
from tests.support import REPO

TINY = ["--epochs", "2", "--hidden_shape", "32", "--output_shape", "16", "--batch_size", "100", "--device", "cpu",
        "--quiet"]


def brute_force_ranking(query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The evaluator's order, written out: float32 cosine of unit rows, higher first, then the lower index.

    Rows are made C-contiguous first, as the evaluator makes them (scipy reads .mat matrices column-major).
    """
    q = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(query)), dim=1)
    g = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(gallery)), dim=1)
    scores = (q @ g.T).numpy()
    order = np.array([sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), order


@pytest.fixture(scope="module")
def mfeat_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mfeat") / "run"
    assert main(["train", "--datasets", "mfeat", *TINY, "--out", str(out)]) == 0
    return out


def paired_container(path: Path) -> None:
    """Two synthetic modalities of one thing per row, no preprocessing, named classes."""
    rng = np.random.default_rng(7)
    splits = {}
    for name, n in (("train", 300), ("valid", 60), ("test", 90)):
        y = rng.integers(0, 4, n)
        centres = rng.normal(size=(4, 12))
        img = centres[y] + 0.5 * rng.normal(size=(n, 12))
        txt = np.concatenate([centres[y], centres[y][:, :5]], 1) + 0.5 * rng.normal(size=(n, 17))
        splits[name] = Split([img, txt], [y, y])
    save_generic(path, MultiModalData("pairs", ["img", "txt"], **splits,
                                      class_names=["cat", "dog", "bird", "fish"]))


def fresh_process(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True,
                          timeout=120).stdout


def test_a_fresh_process_loads_the_run_model_and_encodes_raw_rows_to_the_written_features(mfeat_run):
    """mfeat is standardised at load time: the model applies the run's statistics to the UCI rows."""
    code = f"""
import sys, numpy as np
from drcl_fast import load_model
from drcl_fast.data.mfeat import load_mfeat_raw
from drcl_fast.outputs import load_features
assert "drcl_fast.training.trainer" not in sys.modules
model = load_model({str(mfeat_run / 'model')!r})
raw, _ = load_mfeat_raw("test")
for k in range(6):
    written, _ = load_features({str(mfeat_run)!r}, "mfeat", k)
    print(k, np.array_equal(model.encode(k, raw[k]).numpy(), written))
"""
    assert fresh_process(code).split() == [token for k in range(6) for token in (str(k), "True")]
    manifest = json.loads((mfeat_run / "model" / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["dataset"] == "mfeat"
    assert [e["preprocessing"] for e in manifest["encoders"]] == ["standardise"] * 6
    assert manifest["class_names"] == [str(d) for d in range(10)] and manifest["classes"] == list(range(10))
    assert manifest["metrics"] == json.loads((mfeat_run / "metrics.json").read_text())
    assert manifest["config"]["hidden_shape"] == 32 and "out" not in manifest["config"]
    assert set(manifest["versions"]) == {"drcl_fast", "torch", "python"}


def test_rows_as_the_loader_returns_them_encode_with_preprocessed(mfeat_run, mfeat):
    model = DRCL.load(mfeat_run / "model")
    written, _ = load_features(mfeat_run, "mfeat", 2)
    assert np.array_equal(model.encode("kar", mfeat.test.features[2], preprocessed=True).numpy(), written)
    # Applying the statistics twice is not the same thing: the flag matters.
    assert not np.allclose(model.encode("kar", mfeat.test.features[2]).numpy(), written, atol=1e-3)
    assert model.config.hidden_shape == 32 and model.result is None


def test_index_and_search_on_the_test_split_equal_a_brute_force_ranking(tmp_path, capsys):
    container = tmp_path / "pairs.npz"
    paired_container(container)
    out = tmp_path / "run"
    assert main(["train", "--datasets", "pairs", "--data_path", str(container), "--lr", "1e-3", *TINY,
                 "--out", str(out)]) == 0
    gallery_rows, query_rows = tmp_path / "txt.npy", tmp_path / "img.npz"
    with np.load(container) as f:
        np.save(gallery_rows, f["test_txt_x"])
        np.savez(query_rows, rows=f["test_img_x"])
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"caption-{i}\n" for i in range(90)))
    index = tmp_path / "gallery.idx"
    assert main(["index", "--model", str(out / "model"), "--modality", "txt", "--input", str(gallery_rows),
                 "--ids", str(ids), "--out", str(index), "--quiet"]) == 0
    hits = tmp_path / "hits.csv"
    assert main(["search", "--model", str(out / "model"), "--index", str(index), "--modality", "img",
                 "--query", str(query_rows), "--k", "7", "--out", str(hits), "--quiet"]) == 0

    img, _ = load_features(out, "pairs", 0)
    txt, _ = load_features(out, "pairs", 1)
    scores, order = brute_force_ranking(img, txt, 7)
    rows = list(csv.DictReader(hits.open()))
    assert len(rows) == 90 * 7
    assert [r["id"] for r in rows] == [f"caption-{j}" for j in order.reshape(-1)]
    assert [float(r["score"]) for r in rows] == scores.reshape(-1).astype(np.float64).tolist()
    assert [(int(r["query"]), int(r["rank"])) for r in rows] == [(q, r) for q in range(90) for r in range(1, 8)]

    lines = tmp_path / "hits.jsonl"
    assert main(["search", "--model", str(out / "model"), "--index", str(index), "--modality", "0",
                 "--query", str(query_rows), "--k", "3", "--out", str(lines), "--quiet"]) == 0
    first = json.loads(lines.read_text().splitlines()[5])
    assert first["query"] == 5 and [h["id"] for h in first["hits"]] == [f"caption-{j}" for j in order[5, :3]]
    # faiss's exact flat index finds the exact top k: the printed recall says so; hnsw says what it found.
    capsys.readouterr()
    for kind in ("flat", "hnsw"):
        approximate = tmp_path / f"{kind}.csv"
        assert main(["search", "--model", str(out / "model"), "--index", str(index), "--modality", "img",
                     "--query", str(query_rows), "--k", "7", "--out", str(approximate), "--approximate", kind]) == 0
        found = [r["id"] for r in csv.DictReader(approximate.open())]
        recall = np.mean([len(set(found[q * 7:q * 7 + 7]) & {f"caption-{j}" for j in order[q]}) / 7
                          for q in range(90)])
        assert f"approximate search ({kind}): recall@7 {recall:.4f} against the exact search on 90 of the 90 " \
               f"queries" in capsys.readouterr().out
        assert recall == 1.0 or kind == "hnsw"
    manifest = json.loads((out / "model" / MANIFEST).read_text())
    assert manifest["class_names"] == ["cat", "dog", "bird", "fish"]
    assert [e["preprocessing"] for e in manifest["encoders"]] == [None, None]


def test_model_search_ranks_as_the_evaluator(mfeat_run):
    model = load_model(mfeat_run / "model")
    raw, _ = load_mfeat_raw("test")
    scores, indices = model.search(raw[3][:40], "pix", raw[0], "fou", k=9)
    want_scores, want_order = brute_force_ranking(model.encode("pix", raw[3][:40]).numpy(),
                                                  model.encode("fou", raw[0]).numpy(), 9)
    assert np.array_equal(indices.numpy(), want_order) and np.array_equal(scores.numpy(), want_scores)
    index = build_index(model, "fou", raw[0])
    from_index = model.search(raw[3][:40], "pix", index, k=9)
    assert np.array_equal(from_index[1].numpy(), want_order)


def test_an_index_made_by_another_model_is_refused(mfeat_run, tmp_path):
    model = load_model(mfeat_run / "model")
    raw, _ = load_mfeat_raw("test")
    path = build_index(model, "fou", raw[0][:20]).save(tmp_path / "fou.idx")
    other = DRCL.load(mfeat_run / "model").model
    other.encoders[0].head.weight.data.mul_(-1)
    other.save(tmp_path / "other")
    with pytest.raises(ModelError, match="made by another model"):
        load_model(tmp_path / "other").search(raw[3][:2], "pix", GalleryIndex.load(path), k=3)
    with pytest.raises(SystemExit):
        main(["search", "--model", str(tmp_path / "other"), "--index", str(path), "--modality", "pix",
              "--query", str(tmp_path / "q.npy"), "--out", str(tmp_path / "h.csv")])


def test_save_and_load_round_trip_in_python(mfeat_run, tmp_path):
    model = DRCL.load(mfeat_run / "model")
    again = DRCL.load(model.save(tmp_path / "copy"))
    raw, _ = load_mfeat_raw("test")
    assert torch.equal(model.encode("zer", raw[4]), again.encode("zer", raw[4]))
    assert (tmp_path / "copy" / WEIGHTS).read_bytes() == (mfeat_run / "model" / WEIGHTS).read_bytes()
    assert again.model.fingerprint == model.model.fingerprint


def damaged_copies(source: Path, tmp_path: Path):
    """(name, folder, expected message) for each way a model folder can be broken."""
    import shutil

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(source, target)
        return target

    truncated = copy("truncated")
    payload = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(payload[:len(payload) // 2])
    no_weights = copy("no_weights")
    (no_weights / WEIGHTS).unlink()
    no_manifest = copy("no_manifest")
    (no_manifest / MANIFEST).unlink()
    newer = copy("newer")
    manifest = json.loads((newer / MANIFEST).read_text())
    (newer / MANIFEST).write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION + 1}))
    garbled = copy("garbled")
    (garbled / MANIFEST).write_text("{not json")
    return [("missing", tmp_path / "nowhere", "does not exist"),
            ("truncated", truncated, "truncated, damaged or from another model"),
            ("no weights", no_weights, "incomplete"),
            ("no manifest", no_manifest, "manifest.json does not exist"),
            ("newer", newer, "newer than this drcl_fast reads"),
            ("garbled", garbled, "damaged")]


def test_a_missing_truncated_or_newer_model_is_a_clear_error(mfeat_run, tmp_path, capsys):
    for name, folder, message in damaged_copies(mfeat_run / "model", tmp_path):
        with pytest.raises(ModelError, match=message):
            load_model(folder)
        with pytest.raises(SystemExit) as stop:
            main(["index", "--model", str(folder), "--modality", "fou", "--input", str(tmp_path / "x.npy"),
                  "--out", str(tmp_path / f"{name}.idx")])
        assert stop.value.code == 2 and str(folder) in capsys.readouterr().err


def test_bad_rows_and_modalities_say_what_is_expected(mfeat_run, tmp_path):
    model = load_model(mfeat_run / "model")
    with pytest.raises(ModelError, match="it encodes"):
        model.encode("audio", np.zeros((2, 76)))
    with pytest.raises(ModelError, match="width 76"):
        model.encode("fou", np.zeros((2, 75)))
    with pytest.raises(ModelError, match="NaN or Inf"):
        model.encode("fou", np.full((2, 76), np.nan))
    assert model.encode("fou", np.ones(76)).shape == (1, 16)   # one item
    truncated = tmp_path / "t.idx"
    build_index(model, "fou", np.ones((3, 76))).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-9])
    with pytest.raises(ModelError, match="damaged or truncated"):
        GalleryIndex.load(truncated)
    with pytest.raises(ModelError, match="one id per row"):
        build_index(model, "fou", np.ones((3, 76)), ids=["a", "b"])


def test_view_by_view_runs_build_one_model_holding_each_runs_encoder(mfeat, tmp_path):
    """The released flow trains one view a run into one folder: the model joins them. (Each run's encoder is its
    own: a run of all views at once may split the CPU's threads among units, and BLAS sums differ by threads.)"""
    out = tmp_path / "views"
    raw, _ = load_mfeat_raw("test")
    for k in range(6):   # the first run learns the prior, the others read it (--wselect False)
        prior = ["--wselect", "False"] if k else []
        assert main(["train", "--datasets", "mfeat", *TINY, *prior, "--view_id", str(k), "--out", str(out)]) == 0
        alone = load_model(out / "model")
        assert sorted(alone.encoders) == list(range(k + 1))
        written, _ = load_features(out, "mfeat", k)
        assert np.array_equal(alone.encode(k, raw[k]).numpy(), written)   # this run's encoder joined
    joined = load_model(out / "model")
    for k in range(6):   # and the earlier runs' encoders stayed as they were
        written, _ = load_features(out, "mfeat", k)
        assert np.array_equal(joined.encode(k, raw[k]).numpy(), written)
    assert joined.metrics == json.loads((out / "metrics.json").read_text())
    # A run of other settings does not join it: it would replace the model, so it asks first.
    with pytest.raises(OutputExistsError) as refused:
        fit(mfeat, DRCLConfig.preset("mfeat", epochs=2, hidden_shape=32, output_shape=16, batch_size=100,
                                     device="cpu", quiet=True, seed=2, view_id=1, out=str(tmp_path / "views")),
            progress=False)
    assert str(out / "model" / MANIFEST) in str(refused.value)
