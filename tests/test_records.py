"""JSON records read back from folders (records.py, files.parse_json): every damaged file or missing key is one
UserError naming the file and the key, never a KeyError, RecursionError or UnicodeDecodeError."""

import json

import pytest

from flashdistill.errors import UserError
from flashdistill.files import parse_json, read_json_object
from flashdistill.records import read_record, require

KEYS = {"model_id": str, "vae_area": int, "scale": float, "lora": (str, None)}
GOOD = {"model_id": "m", "vae_area": 4096, "scale": 1, "lora": None}


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "not UTF-8 text"),
    (b"[1, 2]", "must hold a JSON object, got a list"),
    (b"[" * 20000 + b"]" * 20000, "nested more than 100 levels deep"),
    (b'{"a": ' * 20000 + b"1" + b"}" * 20000, "nested more than 100 levels deep"),
    (b'{"model_id": ' + b"9" * 5000 + b"}", "not readable JSON"),
    (b"{", "not valid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "model_id"}).encode(), "missing key 'model_id'"),
    (json.dumps({**GOOD, "vae_area": "4096"}).encode(), "key 'vae_area' must be an integer, got '4096'"),
    (json.dumps({**GOOD, "vae_area": True}).encode(), "key 'vae_area' must be an integer, got True"),
    (json.dumps({**GOOD, "scale": float("nan")}).encode(), "key 'scale' must be a number, got nan"),
    (json.dumps({**GOOD, "lora": 3}).encode(), "key 'lora' must be a string or null, got 3"),
])
def test_damaged_records_name_the_file_and_key(tmp_path, content, message):
    path = tmp_path / "index.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_record(path, "cache index", KEYS)
    assert str(err.value).startswith(f"cache index {path}: ") and message in str(err.value)


def test_good_record_and_nested_keys(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**GOOD, "inner": {"x": [1]}}))
    record = read_record(path, "record", KEYS)
    assert record["vae_area"] == 4096 and record["lora"] is None
    assert require(record["inner"], "x", list, "r.json: inner") == [1]
    with pytest.raises(UserError, match=r"r\.json: inner: missing key 'y'"):
        require(record["inner"], "y", int, "r.json: inner")


def test_parse_json_lines_and_files(tmp_path):
    assert parse_json('{"a": 1}', "f:1") == {"a": 1}
    with pytest.raises(UserError, match=r"^f:3: nested more than 100 levels deep"):
        parse_json("[" * 30000, "f:3")
    (tmp_path / "deep.json").write_text("{\"a\":" * 30000)
    with pytest.raises(UserError, match="model config .*deep.json: nested more than 100 levels deep"):
        read_json_object(tmp_path / "deep.json", "model config")
