"""Tests of the VLM judge against a scriptable local chat-completions server (127.0.0.1 only, no real network)."""

from __future__ import annotations

import base64
import io
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from flashdistill.bench.cases import EditCase, T2ICase
from flashdistill.bench.vlm import VLMJudge
from flashdistill.errors import UserError
from flashdistill.world.categories import EDIT_SUBSCORE_KEYS, EDIT_TITLES

pytestmark = pytest.mark.timeout(30)

KEY = "sk-test-SECRET-0123456789"
KEY_ENV = "FD_TEST_VLM_KEY"
CAT = "text_editing"


# ------------------------------------------------------------------------------------------------ fake server


def completion_body(content: str | None) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "fake-vlm",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def ok(content: str | dict, sleep: float = 0.0) -> dict:
    text = content if isinstance(content, str) else json.dumps(content)
    return {"status": 200, "body": completion_body(text), "sleep": sleep}


def raw(data: bytes, content_type: str = "application/json") -> dict:
    """An HTTP 200 whose body is whatever `data` is (a proxy's HTML page, truncated JSON, ...)."""
    return {"status": 200, "raw": data, "content_type": content_type}


def status(code: int, message: str = "error", headers: dict | None = None) -> dict:
    return {"status": code, "body": {"error": {"message": message, "type": "test", "code": None}},
            "headers": headers or {}}


class FakeServer:
    """Chat-completions server; each request pops the next scripted action, or uses `default` when none is left."""

    def __init__(self):
        self.script: queue.Queue = queue.Queue()
        self.default = ok({"score": 3.0, "reasoning": "default"})
        self.delay = 0.0  # added to every request (concurrency test)
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def push(self, *actions: dict) -> None:
        for action in actions:
            self.script.put(action)

    def next_action(self) -> dict:
        try:
            return self.script.get_nowait()
        except queue.Empty:
            return self.default

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        fake = self.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with fake.lock:
            fake.requests.append(body)
            fake.auth.append(self.headers.get("Authorization", ""))
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        action = fake.next_action() if self.path.startswith("/v1/chat/completions") else status(404, "no such route")
        if "echo" in action:  # a hostile server: the reply is built from the request's Authorization header
            action = ok(action["echo"](self.headers.get("Authorization", "")))
        time.sleep(action.get("sleep", 0.0) + fake.delay)
        with fake.lock:  # counted as finished before the reply leaves, so a follow-up request never overlaps it
            fake.in_flight -= 1
        self._reply(action)

    def _reply(self, action: dict) -> None:
        data = action["raw"] if "raw" in action else json.dumps(action["body"]).encode()
        if "trickle" in action:
            return self._trickle(action, data)
        try:
            self.send_response(action["status"])
            self.send_header("Content-Type", action.get("content_type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            for name, value in action.get("headers", {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass


    def _trickle(self, action: dict, data: bytes) -> None:
        """The reply a byte at a time, every `trickle` seconds: the body only, or (`whole`) the headers too."""
        head = (f"HTTP/1.1 {action['status']} OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        slow = head + data if action.get("whole") else data
        try:
            if not action.get("whole"):
                self.wfile.write(head)
            for i in range(len(slow)):
                self.wfile.write(slow[i:i + 1])
                time.sleep(action["trickle"])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, KEY)
    fake = FakeServer()
    yield fake
    fake.close()


def make_judge(server: FakeServer, **kw) -> VLMJudge:
    args = {"api_key_env": KEY_ENV, "concurrency": 1, "timeout": 5.0, "max_attempts": 4, "backoff": 0.01}
    args.update(kw)
    return VLMJudge(server.url, "fake-vlm", **args)


# ------------------------------------------------------------------------------------------------ fixtures


def img(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3), dtype=np.float32)


def t2i_cases(n: int) -> list[T2ICase]:
    return [T2ICase(id=f"landscape-{i:04d}", category="landscape", prompt=f"a red house {i}", seed=i)
            for i in range(n)]


def edit_cases(n: int, category: str = CAT) -> list[EditCase]:
    return [EditCase(id=f"{category}-{i:04d}", category=category, instruction="change the sign to OPEN",
                     seed=i, source_image="/nonexistent/src.png") for i in range(n)]


def edit_reply(category: str = CAT, overall: float = 3.5, **override) -> dict:
    reply = {"overall_score": overall, "sub_scores": {k: 4 for k in EDIT_SUBSCORE_KEYS[category]},
             "reasoning": "The sign reads OPEN.", "failure_modes": ["slight blur"]}
    reply.update(override)
    return reply


def run_t2i(judge: VLMJudge, n: int = 1) -> dict:
    return dict(judge.judge_t2i(t2i_cases(n), [img(i) for i in range(n)]))


def run_edit(judge: VLMJudge, n: int = 1) -> dict:
    return dict(judge.judge_edit(edit_cases(n), [img(i) for i in range(n)], [img(100 + i) for i in range(n)]))


# ------------------------------------------------------------------------------------------------ tests


def test_valid_t2i_reply(server):
    server.push(ok({"score": 4.256, "reasoning": "The red house is there."}))
    score = run_t2i(make_judge(server))[0]
    assert score.score == 4.26 and score.error is None
    assert score.reasoning == "The red house is there."
    assert score.sub_scores == {} and score.failure_modes == []
    assert score.metrics == {"attempts": 1}


def test_valid_t2i_reply_with_surrounding_whitespace(server):
    server.push(ok('\n  {"score": 2, "reasoning": "meh"}  \n'))
    assert run_t2i(make_judge(server))[0].score == 2.0


def test_valid_edit_reply_exact_subscore_keys(server):
    sub = {k: 1 + i * 0.555 for i, k in enumerate(EDIT_SUBSCORE_KEYS[CAT])}
    server.push(ok(edit_reply(overall=2.5, sub_scores=sub)))
    score = run_edit(make_judge(server))[0]
    assert score.score == 2.5 and score.error is None
    assert tuple(score.sub_scores) == EDIT_SUBSCORE_KEYS[CAT]
    assert score.sub_scores == {k: round(v, 2) for k, v in sub.items()}
    assert score.failure_modes == ["slight blur"] and score.reasoning == "The sign reads OPEN."


_BAD_SUBS = {k: 4 for k in EDIT_SUBSCORE_KEYS[CAT][:-1]} | {"bogus": 4}
MALFORMED_EDIT = {
    "not_json": "The edit looks great, 5/5.",
    "fenced": "```json\n" + json.dumps(edit_reply()) + "\n```",
    "extra_text": "Here you go: " + json.dumps(edit_reply()),
    "missing_key": json.dumps({k: v for k, v in edit_reply().items() if k != "reasoning"}),
    "extra_key": json.dumps(edit_reply() | {"confidence": 0.9}),
    "wrong_subscore_keys": json.dumps(edit_reply(sub_scores=_BAD_SUBS)),
    "out_of_range": json.dumps(edit_reply(overall=7.0)),
    "subscore_out_of_range": json.dumps(edit_reply(sub_scores={k: 0 for k in EDIT_SUBSCORE_KEYS[CAT]})),
    "string_score": json.dumps(edit_reply(overall="4")),
    "bool_score": json.dumps(edit_reply(overall=True)),
    "nan_score": json.dumps(edit_reply()).replace('"overall_score": 3.5', '"overall_score": NaN'),
    "failure_modes_not_list": json.dumps(edit_reply(failure_modes="blur")),
    "array": "[1, 2, 3]",
    "empty": "",
}


@pytest.mark.parametrize("bad", list(MALFORMED_EDIT))
def test_malformed_edit_reply_is_retried_then_succeeds(server, bad):
    server.push(ok(MALFORMED_EDIT[bad]), ok(edit_reply(overall=4.0)))
    score = run_edit(make_judge(server))[0]
    assert score.score == 4.0 and score.error is None
    assert score.metrics == {"attempts": 2}
    assert len(server.requests) == 2


@pytest.mark.parametrize("bad", ['{"score": 4}', '{"score": 0.5, "reasoning": "x"}', '{"score": "4", "reasoning": "x"}',
                                 '{"score": 4, "reasoning": 1}', "4.0", '{"score": 4, "score": 5, "reasoning": "x"}'])
def test_malformed_t2i_reply_is_retried_then_succeeds(server, bad):
    server.push(ok(bad), ok({"score": 1.0, "reasoning": "wrong scene"}))
    score = run_t2i(make_judge(server))[0]
    assert score.score == 1.0 and score.metrics == {"attempts": 2}


@pytest.mark.parametrize("body, content_type", [(b"<html>502 Bad Gateway</html>", "text/html"),
                                                (b'{"id": "chatcmpl-1", "choices": [', "application/json"),
                                                (b"", "application/json"), (b"[1, 2]", "application/json"),
                                                (b'{"id": "chatcmpl-1"}', "application/json"),
                                                (b'{"choices": [{"index": 0}]}', "application/json")])
def test_http_200_whose_body_is_not_a_completion_is_retried(server, body, content_type):
    """Defect: a 200 whose body was not JSON failed the case at once, though malformed replies are retried."""
    server.push(raw(body, content_type), ok({"score": 4.0, "reasoning": "fine"}))
    score = run_t2i(make_judge(server))[0]
    assert score.score == 4.0 and score.metrics == {"attempts": 2} and len(server.requests) == 2


def test_malformed_every_time_fails_the_case_without_raising(server):
    server.default = ok("I cannot rate this image.")
    score = run_t2i(make_judge(server, max_attempts=3))[0]
    assert score.score is None
    assert "malformed" in score.error and "3 attempts" in score.error
    assert score.metrics == {"attempts": 3}
    assert len(server.requests) == 3


def test_500_then_success(server):
    server.push(status(500, "internal"), status(503, "overloaded"), ok({"score": 3.5, "reasoning": "ok"}))
    score = run_t2i(make_judge(server))[0]
    assert score.score == 3.5 and score.metrics == {"attempts": 3}


def test_500_every_time_fails_the_case(server):
    server.default = status(502, "bad gateway")
    score = run_t2i(make_judge(server, max_attempts=2))[0]
    assert score.score is None and "HTTP 502" in score.error and score.metrics == {"attempts": 2}


def test_429_honours_retry_after(server):
    server.push(status(429, "slow down", {"Retry-After": "1"}), ok({"score": 5, "reasoning": "perfect"}))
    start = time.monotonic()
    score = run_t2i(make_judge(server))[0]
    assert time.monotonic() - start >= 0.9  # backoff is 0.01 s, so only Retry-After explains the wait
    assert score.score == 5.0 and score.metrics == {"attempts": 2}


def test_slow_reply_times_out_and_is_retried(server):
    server.push(ok({"score": 1, "reasoning": "too late"}, sleep=2.0), ok({"score": 4, "reasoning": "in time"}))
    start = time.monotonic()
    score = run_t2i(make_judge(server, timeout=0.5))[0]
    assert time.monotonic() - start < 1.9
    assert score.score == 4.0 and score.reasoning == "in time" and score.metrics == {"attempts": 2}


def test_connection_error_is_retried_then_fails(server):
    url = server.url
    server.close()  # nothing listens on the port any more
    judge = VLMJudge(url, "fake-vlm", api_key_env=KEY_ENV, max_attempts=2, backoff=0.01, timeout=2.0)
    score = dict(judge.judge_t2i(t2i_cases(1), [img()]))[0]
    assert score.score is None and "connection error" in score.error and score.metrics == {"attempts": 2}


def test_concurrency_bound_and_every_index_once(server):
    server.delay = 0.2
    judge = make_judge(server, concurrency=2)
    results = list(judge.judge_t2i(t2i_cases(6), [img(i) for i in range(6)]))
    assert sorted(i for i, _ in results) == list(range(6))
    assert all(s.score == 3.0 for _, s in results)
    assert server.max_in_flight == 2


def test_every_index_once_with_mixed_outcomes(server):
    server.push(ok({"score": 2, "reasoning": "a"}), status(400, "bad image"), ok("garbage"))
    results = list(make_judge(server, concurrency=3, max_attempts=2).judge_t2i(
        t2i_cases(10), [img(i) for i in range(10)]))
    assert sorted(i for i, _ in results) == list(range(10))
    assert sum(s.score is None for _, s in results) >= 1  # the 400 is not retried


def test_results_are_yielded_as_cases_finish(server):
    server.delay = 0.3
    gen = make_judge(server, concurrency=1).judge_t2i(t2i_cases(3), [img(i) for i in range(3)])
    start = time.monotonic()
    next(gen)
    assert time.monotonic() - start < 0.85  # the first result arrives before the other cases are judged
    gen.close()
    time.sleep(0.5)
    assert len(server.requests) <= 2  # queued cases are dropped when the caller stops iterating


def test_400_is_not_retried(server):
    server.push(status(400, "image too large"))
    score = run_t2i(make_judge(server))[0]
    assert score.score is None and score.error.startswith("HTTP 400") and "image too large" in score.error
    assert len(server.requests) == 1


@pytest.mark.parametrize("code", [401, 403, 404])
def test_auth_or_model_error_before_any_success_raises_user_error(server, code):
    server.default = status(code, f"Incorrect API key provided: {KEY}")
    with pytest.raises(UserError) as excinfo:
        run_t2i(make_judge(server), n=3)
    message = str(excinfo.value)
    assert f"HTTP {code}" in message and KEY_ENV in message and "\n" not in message
    assert KEY not in message


def test_auth_error_after_a_success_fails_only_that_case_and_hides_the_key(server):
    server.push(ok({"score": 4, "reasoning": "fine"}), status(401, f"key {KEY} revoked"))
    results = run_t2i(make_judge(server), n=3)
    assert results[0].score == 4.0
    assert results[1].score is None and "HTTP 401" in results[1].error
    assert KEY not in results[1].error and "***" in results[1].error
    assert results[2].score == 3.0


def test_api_key_never_in_repr_or_attributes(server):
    judge = make_judge(server)
    assert KEY not in repr(judge) and KEY not in str(judge) and KEY not in judge.description
    assert all(KEY not in repr(v) for k, v in vars(judge).items() if k != "_client")
    assert judge.name == "vlm" and judge.description == f"vlm:fake-vlm@{server.url}"
    run_t2i(judge)
    assert server.auth == [f"Bearer {KEY}"]


def test_missing_key_raises_user_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("FD_NO_SUCH_KEY", raising=False)
    with pytest.raises(UserError, match="FD_NO_SUCH_KEY"):
        VLMJudge("https://api.example.com/v1", "m", api_key_env="FD_NO_SUCH_KEY")


def test_missing_key_is_fine_for_a_localhost_server(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    run_t2i(make_judge(server))
    assert server.auth == ["Bearer EMPTY"]


def test_bad_arguments_raise_user_error(server):
    with pytest.raises(UserError):
        make_judge(server, concurrency=0)
    with pytest.raises(UserError, match="2 images"):
        make_judge(server).judge_t2i(t2i_cases(3), [img(), img()])
    with pytest.raises(UserError, match="shape"):
        make_judge(server).judge_t2i(t2i_cases(1), [np.zeros((32, 32), np.float32)])


def _decode(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).convert("RGB"))


def test_edit_request_contains_images_and_category_prompt(server):
    server.push(ok(edit_reply()))
    source, output = img(1), img(2)
    dict(make_judge(server, image_size=256).judge_edit(edit_cases(1), [source], [output]))
    request = server.requests[0]
    assert request["model"] == "fake-vlm"
    system, user = request["messages"]
    assert system["role"] == "system" and EDIT_TITLES[CAT] in system["content"]
    assert all(f"- {key}:" in system["content"] for key in EDIT_SUBSCORE_KEYS[CAT])
    texts = " ".join(p["text"] for p in user["content"] if p["type"] == "text")
    assert "change the sign to OPEN" in texts and "source image" in texts and "output image" in texts
    kinds = [p["type"] for p in user["content"]]
    assert kinds.index("image_url") > 0 and kinds.count("image_url") == 2
    urls = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
    for url, original in zip(urls, (source, output)):  # source first, then output; 32 px -> 256 px nearest
        decoded = _decode(url)
        assert decoded.shape == (256, 256, 3)
        expected = (np.clip(original, 0, 1) * 255 + 0.5).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        assert np.array_equal(decoded, expected)


def test_t2i_request_contains_prompt_and_image(server):
    run_t2i(make_judge(server, image_size=64))
    system, user = server.requests[0]["messages"]
    assert "prompt compliance" in system["content"].lower() and '"score"' in system["content"]
    assert any(p["type"] == "text" and "a red house 0" in p["text"] for p in user["content"])
    (url,) = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
    assert _decode(url).shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------------ through the CLI


def test_bench_cli_with_vlm_judge_records_failures_and_resumes(server, tmp_path):
    """`flashdistill bench t2i --judge vlm`: a case the server rejects is recorded as failed, not a crash, and a
    rerun of the same command asks the server nothing again."""
    from flashdistill.cli import main

    server.script.put(status(400, "bad request"))  # first case: not retried, recorded as failed
    out = tmp_path / "vlm"
    argv = ["bench", "t2i", "--model", "oracle", "--limit", "2", "--judge", "vlm", "--out", str(out),
            "--vlm-base-url", server.url, "--vlm-model", "fake-vlm", "--vlm-api-key-env", KEY_ENV,
            "--vlm-concurrency", "1"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sum(r["score"] is None for r in rows) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["n_failed"] == 1 and results["judge"].startswith("vlm:fake-vlm")
    asked = len(server.requests)
    assert main(argv) == 0
    assert len(server.requests) == asked
    assert KEY not in (out / "cases.jsonl").read_text() + (out / "run.json").read_text()


def test_retry_failed_asks_again_only_the_failed_cases(server, tmp_path):
    """Defect: a failed case could never be re-asked; `--retry-failed` judges exactly those again."""
    from flashdistill.cli import main

    server.push(status(400, "bad request"), status(400, "bad request"))  # two of six cases fail, not retried
    out = tmp_path / "vlm"
    argv = ["bench", "t2i", "--model", "oracle", "--limit", "2", "--judge", "vlm", "--out", str(out),
            "--vlm-base-url", server.url, "--vlm-model", "fake-vlm", "--vlm-api-key-env", KEY_ENV,
            "--vlm-concurrency", "1"]
    assert main(argv) == 1  # both failed cases are landscape's: no average, exit code 1 (an incomplete result)
    assert json.loads((out / "results.json").read_text())["n_failed"] == 2
    asked = len(server.requests)
    assert main(argv + ["--retry-failed"]) == 0
    assert len(server.requests) == asked + 2  # only the two failed cases
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["score"] == 3.0 for r in rows)
    assert json.loads((out / "results.json").read_text())["n_failed"] == 0
    assert main(argv + ["--retry-failed"]) == 0 and len(server.requests) == asked + 2  # nothing failed: nothing asked


# ------------------------------------------------------------------------------------------------ a hostile server


def bench_argv(out, url: str, *extra: str) -> list[str]:
    return ["bench", "t2i", "--model", "oracle", "--limit", "1", "--judge", "vlm", "--out", str(out),
            "--vlm-base-url", url, "--vlm-model", "fake-vlm", "--vlm-api-key-env", KEY_ENV, *extra]


def everything_written(out) -> str:
    return "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".png")


ECHOES = {"verbatim": lambda auth: f"I saw the header {auth}.", "upper-cased": lambda auth: auth.upper(),
          "spaced out": lambda auth: " ".join(auth), "in a JSON string": lambda auth: json.dumps({"h": auth})}


@pytest.mark.parametrize("echo", list(ECHOES))
def test_a_reply_echoing_the_authorization_header_never_reaches_a_file(server, tmp_path, capsys, echo):
    """Defect: a reply that echoed the request's Authorization header put the API key into cases.jsonl."""
    from flashdistill.cli import main

    server.default = {"echo": lambda auth: {"score": 3.0, "reasoning": ECHOES[echo](auth)}}
    out = tmp_path / "vlm"
    assert main(bench_argv(out, server.url)) == 0
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["score"] == 3.0 and "***" in r["reasoning"] for r in rows)
    captured = capsys.readouterr()
    written = everything_written(out) + captured.out + captured.err
    assert KEY.lower() not in written.lower() and "SECRET" not in written.upper().replace(" ", "")


def test_edit_failure_modes_echoing_the_key_are_scrubbed(server):
    server.default = {"echo": lambda auth: edit_reply(failure_modes=[f"leaked {auth}"], reasoning=auth)}
    score = run_edit(make_judge(server))[0]
    assert score.score == 3.5 and score.failure_modes == ["leaked Bearer ***"] and score.reasoning == "Bearer ***"


@pytest.mark.parametrize("form", ["user", "query"])
def test_a_key_inside_the_base_url_is_never_written(server, tmp_path, capsys, form):
    """Defect: a key inside --vlm-base-url was written to run.json and results.json."""
    from flashdistill.cli import main

    url_key = "sk-in-the-url-9876543210"  # not the environment's key: the URL itself must be redacted
    host = server.url.removeprefix("http://")
    url = f"http://user:{url_key}@{host}" if form == "user" else f"{server.url}?api_key={url_key}"
    out = tmp_path / "vlm"
    # the query form breaks the request path: the server's 404 before any success is a wrong URL (exit 2)
    assert main(bench_argv(out, url)) == (0 if form == "user" else 2)
    captured = capsys.readouterr()
    assert url_key not in everything_written(out) + captured.out + captured.err
    run = json.loads((out / "run.json").read_text())
    assert run["judge"] == ("vlm:fake-vlm@http://***@" + host if form == "user" else
                            f"vlm:fake-vlm@{server.url}?api_key=***")


def test_a_category_whose_cases_all_failed_gives_no_average_and_exit_1(server, tmp_path, capsys):
    """Defect: a category whose cases all failed was dropped from the average (5.0 over 2 of 3), exit 0. Exit 1:
    the command was valid, the judge failed at run time (cli/exits.py), and --retry-failed completes it."""
    from flashdistill.cli import main

    server.default = status(400, "no")  # not retried: every case fails at once ...
    server.push(ok({"score": 5.0, "reasoning": "a"}), ok({"score": 5.0, "reasoning": "b"}))  # ... but two
    out = tmp_path / "vlm"
    assert main(bench_argv(out, server.url, "--vlm-concurrency", "1")) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["average"] is None and len(results["per_category"]) == 2
    assert results["unscored_categories"] == sorted(set(json.loads(line)["category"] for line in
                                                        (out / "cases.jsonl").read_text().splitlines())
                                                    - set(results["per_category"]))
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: every case of {results['unscored_categories'][0]} "
                                                   f"failed, so the bench has no average")


def test_an_endpoint_that_is_down_fails_every_case_and_exits_1(server, tmp_path, monkeypatch, capsys):
    import flashdistill.bench.vlm as vlm
    from flashdistill.cli import main

    monkeypatch.setattr(vlm, "_MAX_DELAY_S", 0.01)  # the CLI's backoff, shortened: four attempts in no time
    url = server.url
    server.close()  # nothing listens on the port any more
    out = tmp_path / "vlm"
    assert main(bench_argv(out, url)) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["n_failed"] == results["n_cases"] == 3 and results["average"] is None
    assert len(results["unscored_categories"]) == 3 and "error: every case of " in capsys.readouterr().err


@pytest.mark.parametrize("whole", [False, True])
def test_a_reply_trickled_a_byte_at_a_time_is_bounded_by_the_timeout(server, whole):
    """Defect: a reply trickled a byte at a time ran 143 s past a 120 s time-out (the time-out was per read)."""
    server.push({**ok({"score": 4, "reasoning": "x" * 200}), "trickle": 0.02, "whole": whole})  # ~5 s in all
    start = time.monotonic()
    score = run_t2i(make_judge(server, timeout=1.0, max_attempts=1))[0]
    elapsed = time.monotonic() - start
    assert score.score is None and score.error.startswith("timeout after 1 s") and elapsed < 1.8


def test_a_huge_reasoning_is_kept_bounded():
    from flashdistill.bench.vlm import MAX_TEXT, parse_t2i_reply

    score = parse_t2i_reply(json.dumps({"score": 4, "reasoning": "x" * 5_000_000}))
    assert score.score == 4 and len(score.reasoning) < MAX_TEXT + 60 and "more characters" in score.reasoning
