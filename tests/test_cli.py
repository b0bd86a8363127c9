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
    assert "| category | attribute | clean | blur 1.0 | noise 0.1 |" in table
    assert "| text | word (whole word) |" in table
    assert set(json.loads(out.read_text())) == {"clean", "blur 1.0", "noise 0.1"}


@pytest.mark.parametrize("argv, flag", [(["generate", "--prompt", "a \udcff lake"], "--prompt"),
                                        (["edit", "--image", "x.png", "--instruction", "\udce9t\udce9"],
                                         "--instruction")])
def test_text_arguments_that_are_not_utf8_are_one_line(tmp_path, capsys, argv, flag):
    """A byte that is not UTF-8 in a prompt reaches argv as a lone surrogate (surrogateescape); the tokenizer
    refused it with a traceback. Now argparse refuses it: one line, exit code 2, before any model loads."""
    with pytest.raises(SystemExit) as stopped:
        main(argv + ["--model", "teacher:base", "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"argument {flag}: not UTF-8 text (byte 0x" in err


def test_a_case_file_with_a_lone_surrogate_is_one_line(tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "a", "category": "text", "prompt": "a \\ud800 sign", "seed": 0}\n')
    assert main(["bench", "t2i", "--model", "noise", "--cases", str(cases), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cases}:1: 'prompt' holds '\\ud800'" in err
