"""How `drcl-fast train` ends: where each output went, no empty checkpoints/ folder, a plain floor line."""
from __future__ import annotations

import re

from drcl_fast.cli import main

TINY = ["train", "--datasets", "mfeat", "--epochs", "2", "--hidden_shape", "32", "--output-shape", "16",
        "--batch_size", "200", "--device", "cpu", "--checkpoint_every", "1"]


def test_the_run_says_where_each_output_went_and_leaves_no_empty_checkpoints_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    summary = printed[printed.index("outputs:"):]
    where = {line.split()[0]: line.split(None, 1)[1] for line in summary[1:]}
    assert list(where) == [f"{out}/PriorW/", f"{out}/features/", f"{out}/logging/mfeat.log", f"{out}/metrics.json",
                         f"{out}/model/"]
    assert "7 files" in where[f"{out}/PriorW/"] and "6 modalities" in where[f"{out}/features/"]
    assert "6 encoders" in where[f"{out}/model/"]
    for path in where:
        assert (out / path[len(str(out)) + 1:]).exists(), path
    # Checkpoints were written every epoch; the finished run removed them, and their folder.
    assert not (out / "checkpoints").exists()
    assert re.search(r"^training took \d+\.\d s, \d+ % of this CPU's measured matrix-product speed \(its encoder "
                     r"products, [\d.]+ [GMT]FLOP, need [\d.]+ s at the measured [\d.]+ [GMT]FLOP/s\)$",
                     captured.err, re.M), captured.err


def test_a_view_run_lists_what_it_wrote_and_keeps_a_folder_with_other_files(tmp_path, capsys):
    out = tmp_path / "run"
    keep = out / "checkpoints" / "notes.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("not a checkpoint")
    assert main([*TINY, "--out", str(out), "--view_id", "1", "--prior", "w0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = printed[printed.index("outputs:"):]
    assert [line.split()[0] for line in summary[1:]] == [f"{out}/features/", f"{out}/logging/mfeat.log",
                                                         f"{out}/model/"]
    assert "(1 modality;" in summary[1]
    assert keep.is_file() and list(keep.parent.iterdir()) == [keep]


def test_quiet_prints_no_summary(tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path), "--quiet"]) == 0
    assert "outputs:" not in capsys.readouterr().out
