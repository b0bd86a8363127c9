"""The one YAML/JSON parser (flashdistill.parsing) and every loader that uses it: recipes, study recipes, teacher
configs, --set overrides, JSON records. Defects: a duplicated `dmd:` block was resolved silently (last one wins);
an alias bomb or a file nested 20k deep ended in a traceback or a hang; a weight written `1e0` was refused."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest

from flashdistill.distill.recipe import load_recipe
from flashdistill.errors import UserError
from flashdistill.files import read_json_object
from flashdistill.parsing import MAX_DEPTH, load_json, load_yaml
from flashdistill.teacher.config import load_config

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "configs" / "studies"
TEACHERS = "teachers: {base: teacher:base, specialized: teacher:specialized}\n"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefghi", "bcdefghij"))  # 10^10 values


def one_line_exit_2(argv: list[str], capsys) -> str:
    from flashdistill.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err.strip()


# ---- duplicate keys ------------------------------------------------------------------------------------------
def test_a_duplicate_key_is_refused_naming_it_and_both_lines():
    with pytest.raises(UserError, match=r"^x\.yaml: duplicate key 'lr' \(line 2 and line 4\); keep one$"):
        load_yaml("dmd:\n  lr: 1.0e-3\n  batch_size: 2\n  lr: 1.0e-4\n", "x.yaml")
    with pytest.raises(UserError, match=r"duplicate key 'a' \(line 1, columns 2 and 8\)"):
        load_yaml("{a: 1, a: 2}", "x")
    assert load_yaml("a: 1\n'1': x\n1: y\n", "x") == {"a": 1, "1": "x", 1: "y"}  # different keys


def test_a_merged_key_overridden_on_purpose_is_not_a_duplicate():
    text = "base: &b {lr: 1.0, steps: 2}\nrun: {<<: *b, lr: 0.5}\n"
    assert load_yaml(text, "x")["run"] == {"lr": 0.5, "steps": 2}


def test_recipe_with_a_duplicated_dmd_block(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TEACHERS + "dmd:\n  lr: 1.0e-3\ncritic:\n  lr: 1.0e-3\ndmd:\n  lr: 1.0e-4\n")
    err = one_line_exit_2(["distill", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert err == f"error: recipe {recipe}: duplicate key 'dmd' (line 2 and line 6); keep one"
    assert not (tmp_path / "run").exists()


def test_teacher_config_with_a_duplicate_key(tmp_path, capsys):
    config = tmp_path / "t.yaml"
    config.write_text((ROOT / "configs" / "teacher_tiny.yaml").read_text() + "train:\n  lr: 1.0\n")
    err = one_line_exit_2(["teacher", "train", str(config), "--out", str(tmp_path / "run")], capsys)
    assert err.startswith(f"error: config {config}: duplicate key 'train' (line ") and not (tmp_path / "run").exists()


def test_study_recipe_with_a_duplicate_key(tmp_path, capsys):
    recipes = tmp_path / "studies"
    shutil.copytree(STUDIES, recipes)
    arm = recipes / "tm3_7to3.yaml"
    arm.write_text(arm.read_text() + "tasks:\n  ratio: '9:1'\n")
    err = one_line_exit_2(["study", "task-mixture", "--preset", "tiny", "--recipes", str(recipes), "--out",
                           str(tmp_path / "study")], capsys)
    assert err.startswith(f"error: study recipe {arm}: duplicate key 'tasks' (line ")
    assert not (tmp_path / "study").exists()


def test_an_override_with_a_duplicate_key():
    with pytest.raises(UserError, match=r"override guidance\.default: cannot parse value .*duplicate key 'base'"):
        load_recipe(ROOT / "configs" / "flash.yaml", ["guidance.default={base: 0.5, base: 1.0}"])


def test_a_json_record_with_a_duplicate_key(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"bench": "t2i", "bench": "edit"}')
    with pytest.raises(UserError, match=f"^run record {path}: duplicate key 'bench' in a JSON object; keep one$"):
        read_json_object(path, "run record")


# ---- deep nesting and alias bombs -----------------------------------------------------------------------------
def test_yaml_and_json_nested_20k_deep_end_in_one_line():
    start = time.monotonic()
    for text in ("[" * 20000 + "]" * 20000, "{a: " * 20000 + "1" + "}" * 20000):
        with pytest.raises(UserError, match=rf"^x: nested more than {MAX_DEPTH} levels deep \(line 1, column"):
            load_yaml(text, "x")
    for text in ("[" * 20000 + "]" * 20000, '{"a": ' * 20000 + "1" + "}" * 20000, "[" * 500 + "]" * 500):
        with pytest.raises(UserError, match=rf"^x: nested more than {MAX_DEPTH} levels deep$"):
            load_json(text, "x")
    assert time.monotonic() - start < 10
    assert load_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") is not None


def test_a_model_config_nested_20k_deep_through_the_cli(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "flashdistill_model.json").write_text("[" * 20000 + "]" * 20000)
    err = one_line_exit_2(["generate", "--model", str(tmp_path / "model"), "--prompt", "x", "--out",
                           str(tmp_path / "o.png")], capsys)
    assert err == f"error: model config {tmp_path / 'model' / 'flashdistill_model.json'}: nested more than " \
                  f"{MAX_DEPTH} levels deep"


def test_an_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path, capsys):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(TEACHERS + BOMB)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(UserError, match=r"aliases \(\*name\) expand to more than 100000 values"):
            load_recipe(recipe)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 5 and peak < 20 * 2 ** 20
    err = one_line_exit_2(["distill", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert err.startswith(f"error: recipe {recipe}: its aliases (*name) expand to more than 100000 values")


def test_aliases_that_nest_deep_or_refer_to_themselves_are_refused():
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [[[[[[[[[[*a{i - 1}]]]]]]]]]]\n" for i in range(1, 12))
    with pytest.raises(UserError, match=rf"aliases \(\*name\) nest more than {MAX_DEPTH} levels deep"):
        load_yaml(chain, "x")
    with pytest.raises(UserError, match=r"an alias \(\*name\) refers to a value that contains it"):
        load_yaml("a: &a [1, *a]\n", "x")
    assert load_yaml("a: &a {x: 1}\nb: [*a, *a]\n", "x")["b"] == [{"x": 1}, {"x": 1}]  # plain reuse is fine


# ---- numbers as a person means them ---------------------------------------------------------------------------
def test_1e0_is_a_number_in_recipes_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TEACHERS + "guidance:\n  default: {base: 1e0}\n  text: {base: 5e-1, specialized: 5E-1}\n"
                      "dmd:\n  lr: 2e-4\n")
    loaded = load_recipe(recipe, ["critic.lr=3e-4", "guidance.default={base: 1e0}", "tasks.ratio=7:3"])
    assert loaded.dmd.lr == 2e-4 and loaded.critic.lr == 3e-4
    assert loaded.guidance["text"][0] == {"base": 0.5, "specialized": 0.5}
    assert loaded.guidance["landscape"][0] == {"base": 1.0}
    assert loaded.tasks.ratio == "7:3"  # a ratio stays a string, not YAML 1.1's base-60 integer 423
    assert load_yaml("a: [1e0, -2E+3, .5e1, 1.0e5, 0x1e, '1e0', 7:3, 1_000]", "x")["a"] == \
        [1.0, -2000.0, 5.0, 100000.0, 30, "1e0", "7:3", 1000]


def test_1e0_in_a_teacher_config_and_its_overrides(tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text((ROOT / "configs" / "teacher_tiny.yaml").read_text().replace("lr: 1.0e-3", "lr: 1e-3"))
    assert load_config(config).train.lr == 1e-3
    assert load_config(config, ["train.lr=5e-4"]).train.lr == 5e-4


def test_shipped_configs_still_load():
    for path in [*(ROOT / "configs").glob("*.yaml"), *STUDIES.glob("*.yaml")]:
        assert isinstance(load_yaml(path.read_text(), str(path)), dict)
    assert json.loads(json.dumps(load_yaml((ROOT / "configs" / "flash.yaml").read_text(), "x")))
