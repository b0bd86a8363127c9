"""VLM judge: scores T2I-Bench and Editing-Bench cases with a vision-language model behind any
OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, LiteLLM, ...), as in the paper's Appendix A.

    judge = VLMJudge("https://api.openai.com/v1", "gpt-4o", api_key_env="OPENAI_API_KEY", concurrency=8)
    for i, score in judge.judge_t2i(cases, images):      # (index, CaseScore) as each case finishes
        write_result(cases[i], score)

Images are float32 (H, W, 3) arrays in [0, 1]; they are sent as PNG data URLs, nearest-neighbour upscaled so the
long side is at most `image_size` (the synthetic world renders 32 px images, too small for a VLM to see).

Behaviour:
- The reply must be exactly one JSON object (surrounding whitespace allowed). A reply in markdown fences or with
  extra text is malformed, like missing/extra keys, non-numeric or out-of-range (1..5) scores, or sub-score keys
  other than EDIT_SUBSCORE_KEYS[category]. Scores are rounded to 2 decimals.
- Retried with jittered exponential backoff (Retry-After honoured, capped at 60 s): HTTP 429, 5xx, timeouts,
  connection errors, malformed replies (an HTTP 200 whose body is not a chat completion, e.g. a proxy's HTML page
  or truncated JSON, is malformed too); at most `max_attempts` attempts per case. A case that still fails yields
  CaseScore(score=None, error=...) instead of raising.
- Other 4xx are not retried and fail the case. 401/403/404 before any request of the run has succeeded raise
  UserError instead (bad key or wrong model/URL: every case would fail the same way).
- `timeout` bounds each request as a whole (connect, send, headers and body): a reply trickled a byte at a time
  times out like a silent one (`vlm_http.deadline`).
- The API key is read from the environment (never stored on the judge, never in repr or error strings). With the
  variable unset and a localhost base_url, the key "EMPTY" is used (local vLLM/SGLang servers need none). Whatever a
  server sends back, the key (and any user, password or query value in base_url) is replaced by `***` in every
  score's text before it is yielded, and `description` / `base_url` name the endpoint without them.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlparse

import numpy as np
import openai
from openai.types.chat import ChatCompletion
from PIL import Image

from flashdistill.bench.cases import EditCase, T2ICase
from flashdistill.bench.rubrics import edit_system_prompt, t2i_system_prompt
from flashdistill.bench.types import CaseScore
from flashdistill.bench.vlm_http import deadline, deadline_client, redact_url, scrub
from flashdistill.errors import UserError
from flashdistill.world.categories import EDIT_SUBSCORE_KEYS

_MAX_DELAY_S = 60.0
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
_FATAL_BEFORE_SUCCESS = {401: "the API key was rejected", 403: "the API key is not allowed to use this model",
                         404: "model or endpoint not found"}
_T2I_KEYS = {"score", "reasoning"}
_EDIT_KEYS = {"overall_score", "sub_scores", "reasoning", "failure_modes"}


class _Malformed(Exception):
    """The reply content is not the JSON the prompt asked for (retried like a transient error)."""


@dataclass
class _Run:
    """State shared by the workers of one judge_* call."""

    endpoint_ok: threading.Event = field(default_factory=threading.Event)  # some request got HTTP 200
    stop: threading.Event = field(default_factory=threading.Event)  # caller stopped iterating: abandon retries


@dataclass
class _Outcome:
    score: CaseScore
    fatal: str | None = None  # message of the UserError to raise instead of yielding


# ---------------------------------------------------------------------------------------------------- images


def _check_image(image: np.ndarray, what: str) -> None:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"VLM judge: {what} must be an (H, W, 3) array, got shape {arr.shape}")


def image_data_url(image: np.ndarray, image_size: int) -> str:
    """PNG data URL of a float (H, W, 3) image in [0, 1], scaled so the long side is at most `image_size`."""
    arr = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    u8 = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    h, w = u8.shape[:2]
    long_side = max(h, w)
    if long_side < image_size:
        # Integer nearest-neighbour factor: pixels stay crisp squares, no invented detail for the judge to grade.
        factor = image_size // long_side
        u8 = u8.repeat(factor, axis=0).repeat(factor, axis=1)
    pil = Image.fromarray(u8)
    if long_side > image_size:
        # Large images are shrunk (cost and request size); LANCZOS avoids the aliasing nearest would add.
        scale = image_size / long_side
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_part(image: np.ndarray, image_size: int) -> dict:
    return {"type": "image_url", "image_url": {"url": image_data_url(image, image_size)}}


# ---------------------------------------------------------------------------------------------------- replies


def _reject_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _Malformed("duplicate key in JSON object")
    return dict(pairs)


def _reject_constant(name: str) -> None:
    raise _Malformed(f"non-standard JSON constant {name}")


def _load_object(text: str | None, keys: set) -> dict:
    """Decode a reply that must be exactly one JSON object with exactly `keys`."""
    if not isinstance(text, str) or not text.strip():
        raise _Malformed("empty reply")
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise _Malformed(f"not a JSON object ({e.msg})") from None
    if not isinstance(obj, dict):
        raise _Malformed(f"reply is a JSON {type(obj).__name__}, not an object")
    if set(obj) != keys:
        raise _Malformed(f"keys {sorted(obj)} != expected {sorted(keys)}")
    return obj


def _score_value(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Malformed(f"{where} is not a number: {value!r}"[:120])
    if not 1.0 <= value <= 5.0:
        raise _Malformed(f"{where}={value} outside 1..5")
    return round(float(value), 2)


MAX_TEXT = 4000  # characters of reasoning (and of each failure mode) kept per case: a judge's reply of megabytes
# would otherwise be written whole into cases.jsonl for every case


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{where} is not a string")
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + f" [... {len(value) - MAX_TEXT} more characters]"


def parse_t2i_reply(text: str | None) -> CaseScore:
    """Validate a T2I judge reply: exactly {"score": 1..5, "reasoning": str}."""
    obj = _load_object(text, _T2I_KEYS)
    return CaseScore(score=_score_value(obj["score"], "score"), reasoning=_string(obj["reasoning"], "reasoning"))


def parse_edit_reply(text: str | None, category: str) -> CaseScore:
    """Validate an edit judge reply; sub_scores must have exactly EDIT_SUBSCORE_KEYS[category]."""
    obj = _load_object(text, _EDIT_KEYS)
    want = EDIT_SUBSCORE_KEYS[category]
    subs = obj["sub_scores"]
    if not isinstance(subs, dict) or set(subs) != set(want):
        got = sorted(subs) if isinstance(subs, dict) else type(subs).__name__
        raise _Malformed(f"sub_scores keys {got} != expected {sorted(want)}")
    modes = obj["failure_modes"]
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        raise _Malformed("failure_modes is not a list of strings")
    return CaseScore(
        score=_score_value(obj["overall_score"], "overall_score"),
        sub_scores={k: _score_value(subs[k], f"sub_scores.{k}") for k in want},
        reasoning=_string(obj["reasoning"], "reasoning"),
        failure_modes=[_string(m, "failure_modes") for m in modes[:32]],
    )


# ---------------------------------------------------------------------------------------------------- HTTP helpers


def _is_local(base_url: str) -> bool:
    return (urlparse(base_url).hostname or "").lower() in _LOCAL_HOSTS


def _resolve_key(api_key_env: str, base_url: str) -> str:
    key = os.environ.get(api_key_env)
    if key:
        return key
    if _is_local(base_url):
        return "EMPTY"  # local OpenAI-compatible servers accept any key
    state = "empty" if key == "" else "not set"
    raise UserError(f"VLM judge: environment variable {api_key_env} is {state}; export the API key for "
                    f"{base_url} there (only a localhost server may run without a key)")


def _retry_after(response: object) -> float | None:
    """Seconds from Retry-After / retry-after-ms headers, or None when absent or unreadable."""
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:  # HTTP-date form
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _status_detail(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        body = body.get("message", body)
    return " ".join(str(body or "").split())[:200]


# ---------------------------------------------------------------------------------------------------- judge


class VLMJudge:
    """Judge benchmark cases with a VLM over the OpenAI chat-completions API (see the module docstring)."""

    name = "vlm"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                 timeout: float = 120.0, max_attempts: int = 4, backoff: float = 2.0, image_size: int = 256):
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"VLM judge: base_url must start with http:// or https://, got '{redact_url(base_url)}'")
        for label, value in (("concurrency", concurrency), ("max_attempts", max_attempts),
                             ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"VLM judge: {label} must be a positive integer, got {value!r}")
        if not timeout > 0 or not math.isfinite(timeout) or backoff < 0:
            raise UserError(f"VLM judge: timeout must be > 0 and backoff >= 0, got {timeout}, {backoff}")
        # What is recorded and printed names the endpoint without the secrets a URL can carry (user, password,
        # query values); the key and the full URL go straight into the client, the judge keeps no copy.
        self.base_url, self.model, self.api_key_env = redact_url(base_url), model, api_key_env
        self.concurrency, self.timeout, self.max_attempts = concurrency, float(timeout), max_attempts
        self.backoff, self.image_size = float(backoff), image_size
        self._client = openai.OpenAI(base_url=base_url, api_key=_resolve_key(api_key_env, base_url),
                                     timeout=self.timeout, max_retries=0,
                                     http_client=deadline_client(self.timeout, concurrency))
        self.description = self._scrub(f"vlm:{model}@{self.base_url}")

    def __repr__(self) -> str:
        return (f"VLMJudge(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r}, "
                f"concurrency={self.concurrency})")

    # -- public API

    def judge_t2i(self, cases: list[T2ICase], images: list[np.ndarray]) -> Iterator[tuple[int, CaseScore]]:
        """Yield (index, CaseScore) for every case, in completion order, at most `concurrency` requests at once."""
        self._check_lengths(len(cases), images=images)
        for i, image in enumerate(images):
            _check_image(image, f"image {i}")
        jobs = [(partial(self._t2i_messages, c, im), parse_t2i_reply) for c, im in zip(cases, images)]
        return self._run(jobs)

    def judge_edit(self, cases: list[EditCase], sources: list[np.ndarray],
                   outputs: list[np.ndarray]) -> Iterator[tuple[int, CaseScore]]:
        """Yield (index, CaseScore) for every edit case, in completion order; score is the reply's overall_score."""
        self._check_lengths(len(cases), sources=sources, outputs=outputs)
        for i, (src, out) in enumerate(zip(sources, outputs)):
            _check_image(src, f"source image {i}")
            _check_image(out, f"output image {i}")
        for case in cases:
            if case.category not in EDIT_SUBSCORE_KEYS:
                raise UserError(f"VLM judge: case '{case.id}' has unknown edit category '{case.category}'")
        jobs = [(partial(self._edit_messages, c, s, o), partial(parse_edit_reply, category=c.category))
                for c, s, o in zip(cases, sources, outputs)]
        return self._run(jobs)

    # -- messages

    @staticmethod
    def _check_lengths(n: int, **lists: list) -> None:
        for label, items in lists.items():
            if len(items) != n:
                raise UserError(f"VLM judge: {n} cases but {len(items)} {label}")

    def _t2i_messages(self, case: T2ICase, image: np.ndarray) -> list[dict]:
        user = [{"type": "text", "text": f"Text prompt: {case.prompt}\nThe generated image follows."},
                _image_part(image, self.image_size)]
        return [{"role": "system", "content": t2i_system_prompt()}, {"role": "user", "content": user}]

    def _edit_messages(self, case: EditCase, source: np.ndarray, output: np.ndarray) -> list[dict]:
        user = [{"type": "text", "text": f"Edit instruction: {case.instruction}"},
                {"type": "text", "text": "This is the source image (before the edit):"},
                _image_part(source, self.image_size),
                {"type": "text", "text": "This is the output image (the edit result to evaluate):"},
                _image_part(output, self.image_size)]
        return [{"role": "system", "content": edit_system_prompt(case.category)},
                {"role": "user", "content": user}]

    # -- execution

    def _run(self, jobs: list[tuple[Callable, Callable]]) -> Iterator[tuple[int, CaseScore]]:
        run = _Run()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="vlm-judge")
        try:
            futures = {pool.submit(self._guarded, build, parse, run): i for i, (build, parse) in enumerate(jobs)}
            for fut in as_completed(futures):
                outcome = fut.result()
                if outcome.fatal:
                    raise UserError(self._scrub(outcome.fatal))
                yield futures[fut], self._scrub_score(outcome.score)
        finally:
            # Also runs when the caller stops iterating early: queued cases are dropped, sleeping retries abort.
            run.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _guarded(self, build: Callable, parse: Callable, run: _Run) -> _Outcome:
        # A per-case failure must never take the whole benchmark down, whatever it is.
        try:
            return self._judge_one(build(), parse, run)
        except Exception as e:  # noqa: BLE001
            return _Outcome(CaseScore(score=None, error=self._scrub(f"{type(e).__name__}: {e}")[:300]))

    def _judge_one(self, messages: list[dict], parse: Callable, run: _Run) -> _Outcome:
        reason = "not attempted"
        for attempt in range(1, self.max_attempts + 1):
            result = self._attempt(messages, parse, run, attempt)
            if isinstance(result, _Outcome):
                return result
            reason, retry_after = result
            if attempt < self.max_attempts and run.stop.wait(self._delay(attempt, retry_after)):
                return self._failed("cancelled", attempt)
        return self._failed(f"{reason} (gave up after {self.max_attempts} attempts)", self.max_attempts)

    def _attempt(self, messages: list[dict], parse: Callable, run: _Run,
                 attempt: int) -> _Outcome | tuple[str, float | None]:
        """One request: a final _Outcome, or (reason, retry_after) when it is worth retrying."""
        try:
            with deadline(self.timeout):  # the time-out bounds the whole request, not each read (vlm_http)
                reply = self._client.chat.completions.create(model=self.model, messages=messages)
        except (ValueError, openai.APIResponseValidationError) as e:  # HTTP 200, body not JSON (JSONDecodeError)
            return self._scrub(f"malformed reply: the body is not a chat completion ({e})")[:300], None
        except openai.APIStatusError as e:
            reason = self._scrub(f"HTTP {e.status_code}: {_status_detail(e)}")
            if e.status_code == 429 or e.status_code >= 500:
                return reason, _retry_after(e.response)
            return self._client_error(e.status_code, reason, run, attempt)
        except openai.APITimeoutError:
            return f"timeout after {self.timeout:g} s", None
        except openai.APIConnectionError as e:
            return self._scrub(f"connection error to {self.base_url}: {e}")[:200], None
        if not isinstance(reply, ChatCompletion) or not reply.choices:  # a 200 with HTML, a list, no choices
            return f"malformed reply: the body is not a chat completion ({type(reply).__name__})", None
        run.endpoint_ok.set()
        try:
            content = getattr(getattr(reply.choices[0], "message", None), "content", None)  # None: malformed
            score = parse(content)
        except _Malformed as e:
            return self._scrub(f"malformed reply: {e}")[:300], None
        score.metrics = {"attempts": attempt}
        return _Outcome(score)

    def _client_error(self, status: int, reason: str, run: _Run, attempt: int) -> _Outcome:
        outcome = self._failed(reason, attempt)
        if status in _FATAL_BEFORE_SUCCESS and not run.endpoint_ok.is_set():
            # Nothing has worked yet: a bad key or model name would fail every case, so stop the run instead.
            outcome.fatal = (f"VLM judge {self.description}: {_FATAL_BEFORE_SUCCESS[status]} ({reason}); "
                             f"check {self.api_key_env}, the model name and the base URL")
        return outcome

    def _failed(self, reason: str, attempts: int) -> _Outcome:
        return _Outcome(CaseScore(score=None, metrics={"attempts": attempts}, error=reason))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, _MAX_DELAY_S)
        # Jitter de-synchronises the workers so they do not hit a rate-limited server in lockstep.
        return min(_MAX_DELAY_S, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _scrub(self, text: str) -> str:
        # Some servers echo the credential (error bodies, a reply quoting the request's Authorization header);
        # never let it reach a result file or a terminal.
        return scrub(text, self._client.api_key, str(self._client.base_url))

    def _scrub_score(self, score: CaseScore) -> CaseScore:
        """`score` with every text a server's reply put into it scrubbed (reasoning, failure modes, error)."""
        score.reasoning = self._scrub(score.reasoning) if score.reasoning else score.reasoning
        score.failure_modes = [self._scrub(m) for m in score.failure_modes]
        score.error = self._scrub(score.error) if score.error else score.error
        return score
