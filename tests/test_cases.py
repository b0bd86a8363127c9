"""The JSONL case format: the shipped mini benches, user files and their errors (file:line, exit code 2)."""

import json

import pytest

from flashdistill.bench.cases import BUILTIN_CASES, edit_bench_cases, load_cases, t2i_bench_cases, write_cases
from flashdistill.cli import main
from flashdistill.errors import UserError


def test_shipped_mini_benches_have_the_documented_size():
    t2i = load_cases(BUILTIN_CASES["t2i"], "t2i")
    edit = load_cases(BUILTIN_CASES["edit"], "edit")
    assert len(t2i) == 600 and len(edit) == 300
    assert {c.category for c in t2i} == {"landscape", "portrait", "text"}
    assert len({c.category for c in edit}) == 6


def test_shipped_files_are_regenerated_exactly_from_bench_seeds(tmp_path):
    write_cases(tmp_path / "t2i.jsonl", t2i_bench_cases(200))
    write_cases(tmp_path / "edit.jsonl", edit_bench_cases(50))
    assert (tmp_path / "t2i.jsonl").read_bytes() == BUILTIN_CASES["t2i"].read_bytes()
    assert (tmp_path / "edit.jsonl").read_bytes() == BUILTIN_CASES["edit"].read_bytes()


def test_limit_takes_first_n_per_category():
    cases = load_cases(BUILTIN_CASES["edit"], "edit", limit=3)
    assert len(cases) == 18 and [c.id for c in cases[:3]] == [f"scene_transformation-000{i}" for i in range(3)]


def test_category_keeps_only_those_categories_with_limit_applied_within(tmp_path, capsys):
    cases = load_cases(BUILTIN_CASES["edit"], "edit", limit=2, categories=["text_editing", "style_transfer"])
    assert [c.id for c in cases] == ["text_editing-0000", "text_editing-0001",
                                     "style_transfer-0000", "style_transfer-0001"]
    code = main(["bench", "t2i", "--model", "oracle", "--category", "txt", "--out", str(tmp_path / "x")])
    assert code == 2 and "unknown t2i category 'txt'" in capsys.readouterr().err
    assert main(["bench", "t2i", "--model", "oracle", "--category", "text", "--limit", "2",
                 "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "results.json").read_text())["n_cases"] == 2


def _write(tmp_path, lines):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"id": "a", "category": "text", "prompt": "a sign", "seed": 1})


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"id": "b", "category": "text", "seed": 1}), "missing key 'prompt'"),
    (json.dumps({"id": "b", "category": "sky", "prompt": "x", "seed": 1}), "unknown T2I category 'sky'"),
    (json.dumps({"id": "b", "category": "text", "prompt": "x", "seed": "1"}), "'seed' must be an integer"),
    (json.dumps({"id": "b", "category": "text", "prompt": "x", "seed": 1, "colour": 2}), "unknown key 'colour'"),
    (GOOD, "duplicate case id 'a'"),
    ('{"id": "b", "category": "text", "prompt": "a \\ud800 sign", "seed": 1}',
     "'prompt' holds .* lone UTF-16 surrogate"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, [GOOD, line])
    with pytest.raises(UserError, match=message) as err:
        load_cases(path, "t2i")
    assert f"{path}:2:" in str(err.value)


def test_cli_reports_bad_case_file_with_exit_2(tmp_path, capsys):
    path = _write(tmp_path, [GOOD, "[1, 2]"])
    code = main(["bench", "t2i", "--model", "noise", "--cases", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}:2:" in err and "Traceback" not in err and err.count("\n") == 1


def test_edit_case_needs_exactly_one_source(tmp_path):
    both = json.dumps({"id": "e", "category": "style_transfer", "instruction": "x", "seed": 0,
                       "source": {}, "source_image": "x.png"})
    with pytest.raises(UserError, match="exactly one of 'source'"):
        load_cases(_write(tmp_path, [both]), "edit")
    missing = json.dumps({"id": "e", "category": "style_transfer", "instruction": "x", "seed": 0,
                          "source_image": "nope.png"})
    with pytest.raises(UserError, match="source_image 'nope.png' not found"):
        load_cases(_write(tmp_path, [missing]), "edit")


def test_world_record_in_a_case_is_validated(tmp_path):
    from flashdistill.world.pools import t2i_item

    item = t2i_item("portrait", 0, "bench")
    bad = {"id": "p", "category": "portrait", "prompt": item.prompt, "seed": 0,
           "record": {**item.record, "eye_color": "violet"}}
    with pytest.raises(UserError, match=r"cases.jsonl:1: record: attribute 'eye_color'"):
        load_cases(_write(tmp_path, [json.dumps(bad)]), "t2i")
    edit = {"id": "e", "category": "style_transfer", "instruction": "x", "seed": 0, "source": item.record,
            "edit": {"kind": "style", "op": "watercolour"}}
    with pytest.raises(UserError, match="edit.op 'watercolour'"):
        load_cases(_write(tmp_path, [json.dumps(edit)]), "edit")


def test_source_images_pil_refuses_are_named_when_the_cases_are_read(tmp_path, monkeypatch):
    """A case's source_image that is no image, a decompression bomb or 16-bit greyscale: refused by load_cases
    (FILE:LINE and the image), not by PIL halfway through a bench run."""
    import numpy as np
    from PIL import Image

    (tmp_path / "junk.png").write_bytes(b"not a png")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "grey16.png")

    def case(image):
        return json.dumps({"id": "e", "category": "style_transfer", "instruction": "x", "seed": 0,
                           "source_image": image})

    with pytest.raises(UserError, match=r"cases\.jsonl:1: source_image .*junk\.png: cannot be read as an image"):
        load_cases(_write(tmp_path, [case("junk.png")]), "edit")
    with pytest.raises(UserError, match=r"cases\.jsonl:1: source_image .*grey16\.png: .*more than 8 bits"):
        load_cases(_write(tmp_path, [case("grey16.png")]), "edit")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match=r"cases\.jsonl:1: source_image .*big\.png: .*decompression bomb"):
        load_cases(_write(tmp_path, [case("big.png")]), "edit")
    (tmp_path / "deep.jsonl").write_text("[" * 20000 + "\n")
    with pytest.raises(UserError, match=r"deep\.jsonl:1: nested more than 100 levels deep"):
        load_cases(tmp_path / "deep.jsonl", "edit")
