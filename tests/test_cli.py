"""The command line: help texts, the world sampler and the reader evaluation."""

import json

import pytest

from flashdistill.cli import build_parser, main


def test_help_names_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("world", "bench", "judge"):
        assert word in out
    parser = build_parser()
    for argv in (["bench", "t2i", "--help"], ["world", "sample", "--help"], ["bench", "table", "--help"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 0


@pytest.mark.parametrize("category", ["portrait", "text_editing"])
def test_world_sample_writes_a_png(tmp_path, category):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["world", "sample", "--category", category, "--n", "3", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size[1] > 3 * 128


def test_world_sample_rejects_bad_n(tmp_path, capsys):
    assert main(["world", "sample", "--category", "text", "--n", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "--n 0" in capsys.readouterr().err


def test_judge_eval_reader_prints_the_clean_blur_noise_table(tmp_path, capsys):
    out = tmp_path / "reader.json"
    assert main(["judge", "eval-reader", "--n", "3", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| category | attribute | clean | blur 1.0 | noise 0.1 |" in table and "| text | word (whole word) |" in table
    assert set(json.loads(out.read_text())) == {"clean", "blur 1.0", "noise 0.1"}
