"""A sweep of bad input on the Qwen-Image path: each case must end as a person would want, in a fresh process.

    python benchmarks/malformed_qwen.py --out benchmarks/results/malformed_qwen.json [--jobs 2] [--only GROUP:NAME ...]

The embedded path has its sweep (`benchmarks/malformed_inputs.py`); this one aims at the full-scale path, on tiny
random Qwen-Image folders built offline (`benchmarks/qwen_sweep_fixtures.py`): data files, pipeline folders, LoRA
files, the condition cache, resume on changed inputs, exported students, `plan`, recipes, the values of `cache`,
`plan`, `qwen`, `generate` and `edit`, and the VLM judge against a local server that misbehaves on purpose
(`benchmarks/hostile_vlm.py`). Every case runs `python -m flashdistill ARGS` and is classified:

- outcome: `clean` (exit 2, one stderr line starting `error:`, no traceback), `incomplete` (exit 1, one such line:
  the input was fine, the result is not, e.g. a judge that scored nothing), `accepted` (exit 0), `traceback`,
  `hang` (past the case's time limit) or `other`;
- `ok` when the outcome is the expected one (`refuse`: clean, naming the file, key or value in `names`; `fail`:
  incomplete, naming `names`; `accept`: accepted; `note`: clean, or accepted with a line on stderr saying what was
  done; `either`: clean or accepted)
  and, whatever the outcome:
  no file of another run was touched (`guard`: the finished run, the world's inputs, and each case's victim are
  hashed before and after), the fake API key in the environment is in no output and no file the case wrote, and no
  refusal came after training began (`forbid`: the run's log must not exist).

Library warnings are silenced (PYTHONWARNINGS=ignore, DIFFUSERS_VERBOSITY / TRANSFORMERS_VERBOSITY=error), as the
embedded sweep does; the one line must be flashdistill's. `tests/test_malformed_qwen.py` runs a fast subset
in-process. With --jobs > 1 a change to the shared inputs is charged to every case that ran meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qwen_sweep_fixtures as fx  # noqa: E402
from hostile_vlm import HostileServer  # noqa: E402
from qwen_sweep_run import ENV, FAKE_KEY, Case, run_case, summarize, table  # noqa: E402

ROOT = fx.ROOT
UNCREATABLE = "/proc/flashdistill-sweep/out"


class Fixtures(dict):
    """Fixture paths; a key that was not built reads as a marker, and cases holding one are left out."""

    def __missing__(self, key):
        return Path(f"<missing:{key}>")


def _out(f, case: str, *parts: str) -> str:
    return str(Path(f["out"]) / case / Path(*parts)) if parts else str(Path(f["out"]) / case)


# ---- case builders ----------------------------------------------------------------------------------------------
def distill(f, name, *extra, group="distill", world=None, out=None, resume=False, accept=False, **kw) -> Case:
    run = out or _out(f, name, "run")
    flags = ["--resume"] * resume + ["--accept-changed-inputs"] * accept
    forbid = kw.pop("forbid", (str(Path(run) / "log.jsonl"),) if out is None else ())
    return Case(name, group, ("distill", str(fx.RECIPE), "--out", str(run), *flags, "--set", *fx.sets(world or f),
                              *extra), forbid=forbid, **kw)


def cache(f, name, *extra, group="cache", sets=None, out=None, **kw) -> Case:
    out = out or _out(f, name, "cache")
    return Case(name, group, ("cache", str(fx.RECIPE), "--out", str(out), "--vae-area", "4096", "--dtype",
                              "float32", *extra, "--set", *(sets or fx.sets(f))), **kw)


def plan(name, *args, **kw) -> Case:
    return Case(name, "plan", ("plan", *map(str, args)), **kw)


def qwen(name, *args, group="qwen", **kw) -> Case:
    return Case(name, group, ("qwen", *map(str, args)), **kw)


def generate(f, name, *args, model=None, **kw) -> Case:
    return Case(name, kw.pop("group", "export"), ("generate", "--model", str(model or f["student"]), "--prompt",
                                                  "a lake", "--out", _out(f, name, "a.png"), *map(str, args)), **kw)


def edit(f, name, image, *args, **kw) -> Case:
    return Case(name, "export", ("edit", "--model", str(f["student"]), "--image", str(image), "--instruction",
                                 "make it blue", "--out", _out(f, name, "a.png"), *map(str, args)), **kw)


def judge(f, name, url, **kw) -> Case:
    return Case(name, "vlm", ("bench", "t2i", "--model", "noise", "--cases", str(f["vlm-cases"]), "--judge", "vlm",
                              "--vlm-base-url", url, "--vlm-model", "m", "--out", _out(f, name, "bench")), **kw)


def cases(f: dict, server: HostileServer | None = None) -> list[Case]:
    """Every case whose fixtures were built (and the VLM ones when a server is given)."""
    f = Fixtures(f)
    f.setdefault("out", Path(f["base"]).parent.parent / "out")
    every = data_cases(f) + folder_cases(f) + cache_cases(f) + run_cases(f) + export_cases(f) + plan_cases(f)
    every += recipe_cases(f) + cli_cases(f) + (vlm_cases(f, server) if server else [])
    return [c for c in every if not any("<missing:" in a for a in c.argv + c.guard)]


def data_cases(f) -> list[Case]:
    bad = ("latin1", "binary", "bad-json", "list-line", "missing-field", "unknown-field", "empty-text", "number",
           "empty-file", "deep", "lone-surrogate")
    out = [distill(f, f"prompts-{b}", f"data.prompts={f[f'prompts:{b}']}", group="data",
                   names=f"prompts-{b}.jsonl") for b in bad]
    out += [cache(f, "prompts-lone-surrogate-cache", group="data", names="prompts-lone-surrogate.jsonl:",
                  sets=fx.sets(f, prompts=f["prompts:lone-surrogate"])),
            cache(f, "edits-lone-surrogate", group="data", names="edits-lone-surrogate.jsonl:",
                  sets=fx.sets(f, edits=f["edits:lone-surrogate"]))]
    images = ("image-missing", "image-text", "image-bomb", "image-4000x1", "image-folder")
    out += [cache(f, f"edits-{b}", group="data", sets=fx.sets(f, edits=f[f"edits:{b}"]), names=f"edits-{b}.jsonl")
            for b in images]
    out.append(cache(f, "edits-image-grey16", group="data", sets=fx.sets(f, edits=f["edits:image-grey16"]),
                     expect="note"))  # converted to RGB: say so, or refuse
    out.append(distill(f, "edits-image-missing-distill", f"data.edits={f['edits:image-missing']}", group="data",
                       names="nope.png"))
    out.append(distill(f, "edits-mixed-aspect", f"data.edits={f['edits:mixed-aspect']}",
                       f"run.text_cache={f['cache:mixed-aspect']}", "dmd.iterations=4", group="data",
                       names="aspect"))  # refused before the first iteration (forbid: no log)
    out.append(distill(f, "prompts-not-cached", f"data.prompts={f['prompts:uncached']}", group="data",
                       names="never cached"))
    return out


def folder_cases(f) -> list[Case]:
    kinds = ("index-not-json", "index-not-utf8", "index-list", "index-no-class", "index-unknown-class", "index-deep",
             "weights-truncated", "weights-garbage", "weights-missing", "config-missing", "config-bad-type")
    out = [distill(f, f"base-{k}", f"teachers.base={f[f'folder:{k}']}", group="folder", names=f"base-{k}")
           for k in kinds]
    out.append(distill(f, "base-nan-weights", f"teachers.base={f['folder:nan']}", group="folder", names="base"))
    out.append(distill(f, "base-missing", f"teachers.base={Path(f['out']) / 'no-such-base'}", group="folder",
                       names="teachers.base"))
    for k in ("index-not-json", "index-list", "index-deep", "text-encoder-garbage"):
        out.append(Case(f"cache-model-{k}", "folder", ("cache", "--model", str(f[f"folder:{k}"]), "--prompts",
                                                       str(f["prompts"]), "--out", _out(f, f"cache-model-{k}")),
                        names=f"base-{k}"))
    loras = ("wrong-shapes", "inconsistent-rank", "no-matching-keys", "no-lora-tensors", "full-transformer",
             "garbage", "truncated", "empty", "folder", "nan")
    out += [distill(f, f"lora-{k}", f"teachers.specialized={f[f'lora:{k}']}", group="lora",
                    names="specialized" if k == "nan" else k) for k in loras]
    return out


def cache_cases(f) -> list[Case]:
    kinds = ("index-not-json", "index-not-utf8", "index-list", "index-no-model-id", "index-no-vae-area", "index-deep",
             "other-model", "empty", "shard-truncated-distill", "shard-garbage-distill")
    out = [distill(f, f"cache-{k}", f"run.text_cache={f[f'cache:{k}']}", group="cache",
                   names=f"cache-{k}") for k in kinds]
    for k in ("shard-truncated-recache", "shard-garbage-recache"):  # `cache` again re-encodes what a shard held
        out.append(cache(f, f"cache-{k}", out=f[f"cache:{k}"], expect="accept"))
    return out


def run_cases(f) -> list[Case]:
    out = []
    for name in ("base-swapped", "lora-replaced", "prompts-edited", "image-edited"):
        key = {"base-swapped": "teachers.base", "lora-replaced": "teachers.specialized",
               "prompts-edited": "data.prompts", "image-edited": "data.edits"}[name]
        w = fx.world_paths(f, Path(f[f"resume-world:{name}"]))
        out.append(distill(f, f"resume-{name}", "dmd.iterations=3", group="resume", world=w,
                           out=f[f"resume:{name}"], resume=True, names=key))
    w = fx.world_paths(f, Path(f["resume-world:accepted"]))
    out.append(distill(f, "resume-accept-changed-inputs", "dmd.iterations=3", group="resume", world=w,
                       out=f["resume:accepted"], resume=True, accept=True, expect="accept"))
    out.append(distill(f, "resume-newest-truncated", "dmd.iterations=3", group="resume",
                       out=f["ckpt:newest-truncated"], resume=True, expect="accept"))  # the previous one is used
    for name in ("all-truncated", "state-torn"):
        out.append(distill(f, f"resume-{name}", "dmd.iterations=3", group="resume", out=f[f"ckpt:{name}"],
                           resume=True, names=f"ckpt-{name}"))
    out.append(distill(f, "resume-lr-changed", "dmd.iterations=3", "dmd.lr=5e-5", group="resume",
                       out=f["ckpt:lr-changed"], resume=True, expect="accept"))
    victim = lambda k: (str(f[f"victim:{k}"]),)  # noqa: E731
    out += [Case("teacher-train-into-distill-run", "runs", ("teacher", "train", str(ROOT / "configs/teacher_tiny.yaml"),
                                                            "--out", str(f["victim:teacher"]), "--set",
                                                            f"run.text_cache={_out(f, 'text-cache')}",
                                                            "train.steps=1"), guard=victim("teacher"),
                 names="victim-teacher"),
            distill(f, "distill-into-finished-run", group="runs", out=f["victim:distill"], guard=victim("distill"),
                    names="victim-distill"),
            cache(f, "cache-into-distill-run", group="runs", out=f["victim:cache"], guard=victim("cache"),
                  names="victim-cache"),
            qwen("random-lora-over-a-lora", "random-lora", "--base", f["base"], "--out", f["victim:lora-file"],
                 guard=victim("lora-file"), names="victim-lora", group="runs"),
            qwen("tiny-folder-over-a-pipeline", "tiny-folder", "--out", f["victim:pipeline"],
                 guard=victim("pipeline"), names="victim-pipeline", group="runs")]
    return out


def export_cases(f) -> list[Case]:
    kinds = ("json-broken", "json-not-utf8", "json-list", "no-resolution", "no-base", "timesteps-word", "base-gone",
             "weights-garbage", "scheduler-missing")
    out = [generate(f, f"student-{k}", model=f[f"student:{k}"], names="no-such-base" if k == "base-gone" else
                    f"student-{k}") for k in kinds]
    out += [generate(f, "cfg-on-student", "--cfg", 3, names="--cfg"),  # a DMD student runs unguided
            generate(f, "resolution-on-student", "--resolution", 128, expect="accept"),  # honoured (test_qwen_inputs)
            generate(f, "resolution-hxw-on-student", "--resolution", "48x80", expect="accept"),  # non-square
            generate(f, "resolution-hxw-not-16", "--resolution", "48x50", names="--resolution 48x50"),
            generate(f, "prompt-not-utf8", "--prompt", "a \udcff lake", names="--prompt"),  # a byte 0xff in argv
            generate(f, "nfe-0", "--nfe", 0, names="--nfe"),
            generate(f, "nfe-beyond-student", "--nfe", 9, names="NFE"),
            generate(f, "n-0", "--n", 0, names="--n"),
            Case("out-is-folder", "export", ("generate", "--model", str(f["student"]), "--prompt", "x", "--out",
                                             str(f["image:folder"])), names="folder.png")]
    for k in ("text", "bomb", "folder"):
        out.append(edit(f, f"edit-image-{k}", f[f"image:{k}"], names=Path(f[f"image:{k}"]).name))
    out.append(edit(f, "edit-image-4000x1", f["image:4000x1"], expect="either"))  # `edit` resizes to the model's side
    out += [edit(f, "edit-image-missing", Path(f["out"]) / "nope.png", names="nope.png"),
            edit(f, "edit-image-grey16", f["image:grey16"], expect="note"),
            edit(f, "edit-nfe-0", f["image:tall"], "--nfe", 0, names="--nfe")]
    return out


def plan_cases(f) -> list[Case]:
    return [plan("teachers-1e9", "qwen-image", "--teachers", 10**9, names="--teachers"),
            plan("world-size-1e30", "qwen-image", "--world-size", 10**30, names="--world-size"),
            plan("resolution-17", "qwen-image", "--resolution", 17, names="--resolution"),
            plan("set-on-a-model", "qwen-image", "--set", "dmd.lr=1", names="dmd.lr"),
            plan("lora-rank-0", "qwen-image", "--lora-rank", 0, names="--lora-rank"),
            plan("text-tokens-negative", "qwen-image", "--text-tokens", -1, names="--text-tokens"),
            plan("out-is-folder", "qwen-image", "--out", f["image:folder"], names="folder.png"),
            plan("spec-missing", Path(f["out"]) / "nothing", names="nothing"),
            *[plan(f"config-{k}", f[f"config:{k}"], names=f"config-{k}")
              for k in ("layers-0", "layers-word", "layers-200k", "list", "not-utf8")],
            plan("recipe-bad-value", fx.RECIPE, "--set", *fx.sets(f), "dmd.batch_size=0", names="dmd.batch_size")]


def recipe_cases(f) -> list[Case]:
    out = [Case(f"yaml-{k}", "recipe", ("distill", str(f[f"recipe:{k}"]), "--out", _out(f, f"yaml-{k}"), "--set",
                                       *fx.sets(f)), names=n)
           for k, n in (("duplicate-group", "dmd"), ("duplicate-key", "lr"), ("alias-bomb", ""),
                        ("deep", "recipe-deep"))]
    out.append(Case("guidance-1e0", "recipe", ("plan", str(f["recipe:guidance-1e0"]), "--set", *fx.sets(f)),
                    expect="accept"))  # 1e0 is the number one (YAML 1.1 reads it as a string)
    values = (("composition-1e308", "data.composition={landscape: 1e308, portrait: 1e308, text: 1e308}", "data"),
              ("batch-1e7", "dmd.batch_size=10000000", "dmd.batch_size"), ("device-banana", "run.device=banana",
                                                                           "run.device"),
              ("threads-1e9", "run.threads=1000000000", "run.threads"),
              ("lora-rank-1e9", "roles.lora_rank=1000000000", "roles.lora_rank"),
              ("cfg-inf", "dmd.cfg_scale=.inf", "dmd.cfg_scale"))
    out += [distill(f, k, v, group="recipe", names=n) for k, v, n in values]
    import torch

    if not torch.cuda.is_available():  # on a machine without CUDA, asking for it must be one line
        out.append(distill(f, "device-cuda-absent", "run.device=cuda", group="recipe", names="cuda"))
    return out


def cli_cases(f) -> list[Case]:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    c = [cache(f, f"{k}", *args, names=n) for k, args, n in (
        ("vae-area-0", ("--vae-area", "0"), "--vae-area"), ("batch-size-0", ("--batch-size", "0"), "--batch-size"),
        ("shard-size-0", ("--shard-size", "0"), "--shard-size"), ("dtype-int8", ("--dtype", "int8"), "--dtype"),
        ("device-banana", ("--device", "banana"), "banana"),
        ("device-absent", ("--device", f"cuda:{gpus}"), f"cuda:{gpus}"))]
    c += [cache(f, "out-is-file", out=f["file"], names="a-file"),
          cache(f, "out-uncreatable", out=UNCREATABLE, names="/proc"),
          Case("model-not-a-pipeline", "cache", ("cache", "--model", str(Path(f["image:folder"])), "--prompts",
                                                 str(f["prompts"]), "--out", _out(f, "c-np")), names="folder.png"),
          Case("nothing-to-encode", "cache", ("cache", "--model", str(f["base"]), "--out", _out(f, "c-ne")),
               names="nothing to encode"),
          Case("recipe-missing", "cache", ("cache", str(Path(f["out"]) / "nope.yaml")), names="nope.yaml")]

    def lora(name, *args, **kw) -> Case:
        return qwen(name, "random-lora", "--base", f["base"], "--out", _out(f, name, "l.safetensors"), *args, **kw)

    c += [qwen("tiny-kind-unknown", "tiny-folder", "--kind", "video", "--out", _out(f, "tk"), names="--kind"),
          qwen("tiny-seed-negative", "tiny-folder", "--seed", -1, "--out", _out(f, "ts"), names="--seed"),
          qwen("tiny-out-is-file", "tiny-folder", "--out", f["file"], names="a-file"),
          qwen("tiny-out-uncreatable", "tiny-folder", "--out", UNCREATABLE, names="/proc"),
          lora("lora-rank-1e9", "--rank", 10**9, names="--rank"),
          lora("lora-std-1e300", "--std", "1e300", names="--std"),
          lora("lora-std-0", "--std", 0, names="--std"), lora("lora-std-nan", "--std", "nan", names="--std"),
          qwen("lora-out-folder", "random-lora", "--base", f["base"], "--out", f["lora:folder"], names="folder"),
          qwen("lora-out-bin", "random-lora", "--base", f["base"], "--out", _out(f, "lb", "l.bin"), names="l.bin"),
          qwen("lora-base-not-pipeline", "random-lora", "--base", f["image:folder"], "--out",
               _out(f, "lbn.safetensors"), names="folder.png"),
          qwen("lora-base-garbage-weights", "random-lora", "--base", f["folder:weights-garbage"], "--out",
               _out(f, "lbg.safetensors"), names="base-weights-garbage")]
    return c


def vlm_cases(f, server: HostileServer) -> list[Case]:
    url = server.url
    keyed = url("ok").replace("http://", f"http://{FAKE_KEY}@")
    # a judge that fails every case of a category at run time (malformed, HTML, out of range, down): exit 1
    return [judge(f, "reply-echoes-the-key", url("echo"), expect="fail"),  # every case malformed: all failed
            judge(f, "reasoning-quotes-the-key", url("echo-reasoning"), expect="accept"),
            judge(f, "key-in-base-url", keyed, expect="either"),  # refuse it, or run and write the key nowhere
            judge(f, "one-category-all-failed", url("fail-one-category"), names="text", expect="fail"),
            judge(f, "endpoint-down", "http://127.0.0.1:9/v1", names="127.0.0.1", expect="fail"),
            judge(f, "html-instead-of-json", url("html"), expect="fail"),
            judge(f, "key-rejected", url("unauthorized")),  # refused before any case: a bad key is bad input
            judge(f, "score-out-of-range", url("score-7"), expect="fail"), judge(f, "reply-5mb", url("huge"), expect="accept"),  # a valid score: its reasoning is kept to 4000 chars
            judge(f, "reply-trickled", url("trickle"), expect="accept", timeout=160.0)]  # a 120 s limit per request


def shared(f) -> tuple[str, ...]:
    """What every case must leave alone: the finished run and the world's inputs."""
    keys = ("run", "base", "lora", "cache")
    return tuple(str(f[k]) for k in keys if k in f) + ((str(Path(f["prompts"]).parent),) if "prompts" in f else ())


def run(case: Case, f, in_process: bool = False) -> dict:
    return run_case(case, Path(_out(f, case.name)), shared(f), in_process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/malformed_qwen.json")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--only", nargs="*", default=None, help="run only these cases (GROUP:NAME, or GROUP)")
    parser.add_argument("--keep", default=None, help="build the fixtures in this folder and keep them")
    args = parser.parse_args(argv)
    os.environ.update({k: v for k, v in ENV.items() if k != "OPENAI_API_KEY"})
    with contextlib.ExitStack() as stack:
        tmp = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fdq-")))
        start = time.perf_counter()
        f = fx.build(tmp)
        print(f"fixtures: {time.perf_counter() - start:.0f} s in {tmp}", file=sys.stderr)
        server = stack.enter_context(HostileServer())
        todo = [c for c in cases(f, server) if args.only is None
                or f"{c.group}:{c.name}" in args.only or c.group in args.only]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda c: run(c, f), todo))
    rows = json.loads(json.dumps(rows).replace(str(tmp), "$TMP"))  # the fixtures' folder is gone: say so
    summary = summarize(rows)
    print(table(rows, summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "command": "python benchmarks/malformed_qwen.py", "rows": rows},
                              indent=1) + "\n")
    return 0 if summary["ok"] == summary["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
