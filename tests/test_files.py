"""Dataset files: prompts.jsonl and edits.jsonl become items; every bad line is FILE:LINE: what is wrong."""

import json

import pytest
from PIL import Image

from flashdistill.data.files import categories, read_edits, read_prompts
from flashdistill.errors import UserError


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_prompts_and_edits(tmp_path):
    p = _write(tmp_path / "prompts.jsonl", [{"prompt": "a lake at dawn", "category": "landscape"}, "",
                                            {"prompt": "a sign that reads OPEN", "category": "text"}])
    items = read_prompts(p)
    assert [(i.category, i.text, i.source) for i in items] == [("landscape", "a lake at dawn", None),
                                                              ("text", "a sign that reads OPEN", None)]
    assert items[1].where == f"{p}:3" and categories(items) == ["landscape", "text"]
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "img" / "a.png")
    e = _write(tmp_path / "edits.jsonl", [{"image": "img/a.png", "instruction": "make it blue", "category": "style"}])
    (edit,) = read_edits(e)
    assert edit.is_edit and edit.source == tmp_path / "img" / "a.png"
    assert edit.load_source().size == (8, 6)


@pytest.mark.parametrize("line, message", [
    ("{not json", ":1: not valid JSON"),
    ("[1, 2]", ":1: must be a JSON object, got list"),
    ({"prompt": "x"}, ":1: missing field 'category'"),
    ({"prompt": 3, "category": "a"}, ":1: 'prompt' must be a string, got int"),
    ({"prompt": "  ", "category": "a"}, ":1: 'prompt' is empty"),
    ({"prompt": "x", "category": "a", "seed": 1}, ":1: unknown field(s) seed"),
    ('{"prompt": "\\ud800 a sign", "category": "text"}', ":1: 'prompt' holds '\\ud800' at character 1, a lone"),
    ('{"prompt": "a sign", "category": "t\\udcff"}', ":1: 'category' holds '\\udcff' at character 2"),
    ('{"prompt": "a sign", "category": "text", "\\ud83d": 1}', ":1: the key '\\ud83d' holds"),
])
def test_bad_prompt_lines(tmp_path, line, message):
    p = _write(tmp_path / "p.jsonl", [line])
    with pytest.raises(UserError) as err:
        read_prompts(p)
    assert str(err.value).startswith(str(p)) and message in str(err.value)


def test_bad_images(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    e = _write(tmp_path / "e.jsonl", [{"image": "missing.png", "instruction": "x", "category": "c"}])
    with pytest.raises(UserError, match=r"e\.jsonl:1: image .*missing\.png: no such file"):
        read_edits(e)
    e = _write(tmp_path / "e.jsonl", [{"image": "broken.png", "instruction": "x", "category": "c"}])
    with pytest.raises(UserError, match=r"e\.jsonl:1: image .*broken\.png: cannot be read as an image"):
        read_edits(e)
    with pytest.raises(UserError, match="no such file"):
        read_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="no prompts"):
        read_prompts(_write(tmp_path / "empty.jsonl", [""]))


def _sixteen_bit_grey(path):
    import numpy as np

    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"  # what PIL makes of it: a plain convert("RGB") would clip it to white
    return path


def test_images_pil_refuses_and_high_bit_depth(tmp_path, monkeypatch):
    """A decompression bomb and a 16-bit greyscale source are one line naming FILE:LINE and the image; a 16-bit
    source is refused rather than converted (PIL's conversion clips it to white; the mapping is the user's)."""
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    _sixteen_bit_grey(tmp_path / "grey16.png")
    e = _write(tmp_path / "e.jsonl", [{"image": "big.png", "instruction": "x", "category": "c"},
                                      {"image": "grey16.png", "instruction": "x", "category": "c"}])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is over twice the limit: PIL's bomb error
    with pytest.raises(UserError, match=r"e\.jsonl:1: image .*big\.png: PIL refuses to open it as a possible "
                                        r"decompression bomb"):
        read_edits(e)
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"e\.jsonl:2: image .*grey16\.png: an image of more than 8 bits per channel "
                                        r"\(PIL mode I;16"):
        read_edits(e)
    assert len(read_edits(e, check_images=False)) == 2  # the check is the image's, not the line's


def test_a_lone_surrogate_in_an_edit_instruction_names_the_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    good = {"image": "a.png", "instruction": "make it blue \U0001F600", "category": "style"}  # a real pair: text
    e = _write(tmp_path / "e.jsonl", [good, '{"image": "a.png", "instruction": "make it \\udc00", "category": "s"}'])
    with pytest.raises(UserError, match=r"e\.jsonl:2: 'instruction' holds '\\udc00' at character 9, a lone UTF-16"):
        read_edits(e)
    assert read_edits(_write(tmp_path / "ok.jsonl", [good, '{"image": "a.png", "instruction": "\\ud83d\\ude00", '
                                                          '"category": "s"}']))[1].text == "\U0001F600"
