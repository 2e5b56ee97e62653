"""One generation layer for everything in cd_fast that asks a model to write: teacher traces
(`cdfast generate`), the student's answers (`cdfast eval`) and rewritten traces
(`cdfast compress --method rewrite`).

A `Request` is chat messages plus its `Sampling` (max new tokens, temperature, top-p, n samples,
seed, stop strings); a backend answers each request with n `Reply`s: the text after the
reasoning, the reasoning (a server's `reasoning_content`/`reasoning`, or `<think>` tags), token
counts and whether the reply hit its token limit. Backends, built from plain arguments by
`make_generator`:

- transformers: batched `generate` with left padding and a KV cache, CPU or GPU. Seeded sampling
  runs one request at a time (its n samples together), so a request's replies do not depend on
  which others share its batch: a resumed run writes what a straight run writes.
- vllm: vLLM's offline engine (continuous batching; `tensor_parallel_size` GPUs).
- http: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, llama.cpp,
  `transformers serve`): `concurrency` requests in flight, timeouts, retries with exponential
  backoff, the API key read from an environment variable. The n samples of a request are n
  requests with seeds seed, seed+1, ... (servers differ in whether they honour `n`).

`stream` yields each request's replies as soon as they are complete, so a job commits finished
work before a later request fails.
"""

from __future__ import annotations

import abc
import gc
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cd_fast.config import check_ranges, option
from cd_fast.formats import THINK_CLOSE, THINK_OPEN, chat_prompt, split_completion

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm", "http")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
BACKEND = "generation backend"


@dataclass(frozen=True)
class Sampling:
    """How one request is sampled; temperature 0 is greedy."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, "
                f"{self.top_p}"
            )
        if self.n < 1 or (self.n > 1 and self.temperature == 0):
            raise ValueError(
                f"n = {self.n}: several samples of a request need a temperature above 0 "
                "(greedy replies are all the same)"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Request:
    messages: tuple[dict[str, str], ...]
    sampling: Sampling

    @classmethod
    def user(cls, text: str, sampling: Sampling, system: str | None = None) -> Request:
        """One user turn (after an optional system prompt)."""
        turns = [{"role": "system", "content": system}] if system else []
        return cls((*turns, {"role": "user", "content": text}), sampling)


@dataclass
class Reply:
    text: str
    """The reply after its reasoning (all of it when the model does not separate reasoning)."""
    reasoning: str | None
    prompt_tokens: int | None
    output_tokens: int | None
    truncated: bool
    """The reply used its whole token limit without stopping."""

    def full_text(self) -> str:
        """Reasoning and reply as one completion (`<think>` tags around the reasoning)."""
        if self.reasoning is None:
            return self.text
        return f"{THINK_OPEN}\n{self.reasoning}\n{THINK_CLOSE}\n\n{self.text}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, reply) of a completion: the reasoning inside `<think>..</think>` (an opening
    tag the chat template wrote is not needed; a reply cut off inside its reasoning is all
    reasoning), None when the completion has no think tags."""
    if THINK_CLOSE not in text and not text.lstrip().startswith(THINK_OPEN):
        return None, text.strip()
    reasoning, answer = split_completion(text)
    return reasoning, answer or ""


class Generator(abc.ABC):
    """A backend: n replies per request."""

    name: str

    @abc.abstractmethod
    def stream(self, requests: Sequence[Request]) -> Iterator[tuple[int, list[Reply]]]:
        """(index of the request, its n replies) as each request completes, in any order."""

    def generate(self, requests: Sequence[Request]) -> list[list[Reply]]:
        """Every request's replies, in order."""
        out: list[list[Reply] | None] = [None] * len(requests)
        for index, replies in self.stream(requests):
            out[index] = replies
        return out  # type: ignore[return-value]

    def close(self) -> None:  # noqa: B027 - backends without resources keep the default
        """Free what the backend holds (an engine, its GPU memory)."""


# ---- transformers ----


class TransformersGenerator(Generator):
    """Batched `generate` with a local model (folder, hub id or .gguf), greedy or sampled."""

    name = "transformers"

    def __init__(
        self,
        model: str | Path,
        device: torch.device | str | None = None,
        batch_size: int = 8,
        compile: bool = False,
    ):
        from cd_fast.models import load_generator

        self.model, self.tokenizer = load_generator(model, device=device)
        self.batch_size = batch_size
        if compile and self.device.type == "cuda":
            self.model.generation_config.cache_implementation = "static"
            self.model.forward = torch.compile(self.model.forward, mode="reduce-overhead")

    @property
    def device(self) -> torch.device:
        return self.model.get_output_embeddings().weight.device

    def stream(self, requests: Sequence[Request]) -> Iterator[tuple[int, list[Reply]]]:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, request in enumerate(requests):
            s = request.sampling
            # seeded samples alone: they must not depend on their batch's company
            alone = s.seed is not None and not s.greedy
            key = ("alone", index) if alone else (s.temperature, s.top_p, s.n, s.stop)
            groups.setdefault(key, []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                replies = self._run([requests[i] for i in chunk])
                yield from zip(chunk, replies, strict=True)

    @torch.inference_mode()
    def _run(self, requests: list[Request]) -> list[list[Reply]]:
        """One generate() call for requests that share their sampling settings."""
        sampling = requests[0].sampling
        tokenizer = self.tokenizer
        limits = [r.sampling.max_new_tokens for r in requests]
        prompts = [chat_prompt(tokenizer, list(r.messages)) for r in requests]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        options: dict[str, Any] = {"max_new_tokens": max(limits)}
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
        if sampling.greedy:
            options["do_sample"] = False
        else:
            options.update(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,  # off: the model's default top-k would narrow what was asked
                num_return_sequences=sampling.n,
            )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices, enabled=sampling.seed is not None):  # caller's RNG kept
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            generated = self.model.generate(
                **encoded.to(self.device), pad_token_id=tokenizer.pad_token_id, **options
            )
        prompt_tokens = encoded["attention_mask"].sum(1).tolist()
        rows = generated[:, encoded["input_ids"].shape[1] :].tolist()
        special = {tokenizer.pad_token_id, tokenizer.eos_token_id}
        out = []
        for i, limit in enumerate(limits):
            replies = []
            for row in rows[i * sampling.n : (i + 1) * sampling.n]:
                tokens = row[:limit]
                while tokens and tokens[-1] == tokenizer.pad_token_id:
                    tokens = tokens[:-1]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                stopped = (bool(tokens) and tokens[-1] in special) or any(
                    s in text for s in sampling.stop
                )
                reasoning, answer = split_reasoning(text)
                replies.append(
                    Reply(
                        text=answer,
                        reasoning=reasoning,
                        prompt_tokens=prompt_tokens[i],
                        output_tokens=sum(t not in special for t in tokens),
                        truncated=not stopped and len(tokens) >= limit,
                    )
                )
            out.append(replies)
        return out


# ---- vLLM ----


class VLLMGenerator(Generator):
    """vLLM's offline engine: continuous batching over every request at once."""

    name = "vllm"

    def __init__(self, model: str | Path, tensor_parallel_size: int = 1, **engine_options: Any):
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("backend vllm needs vLLM: pip install vllm") from None
        self.llm = LLM(
            model=str(model), tensor_parallel_size=tensor_parallel_size, **engine_options
        )

    def stream(self, requests: Sequence[Request]) -> Iterator[tuple[int, list[Reply]]]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_new_tokens,
                seed=s.seed,
                stop=list(s.stop) or None,
            )
            for s in (r.sampling for r in requests)
        ]
        conversations = [list(r.messages) for r in requests]
        results = self.llm.chat(conversations, params, use_tqdm=False)
        for index, result in enumerate(results):
            replies = []
            for output in result.outputs:
                reasoning, answer = split_reasoning(output.text)
                replies.append(
                    Reply(
                        text=answer,
                        reasoning=reasoning,
                        prompt_tokens=len(result.prompt_token_ids or ()),
                        output_tokens=len(output.token_ids),
                        truncated=output.finish_reason == "length",
                    )
                )
            yield index, replies

    def close(self) -> None:
        """Drop the engine and hand its GPU memory back (what vLLM's docs do between engines)."""
        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- HTTP ----


class HTTPGenerator(Generator):
    """OpenAI-compatible chat completions over HTTP, `concurrency` requests in flight."""

    name = "http"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 1.0,
    ):
        """`backoff` seconds double with every retry."""
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(payload).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def complete(self, request: Request, sample: int = 0) -> Reply:
        """One reply (sample `sample` of the request: its seed is the request's + sample)."""
        s = request.sampling
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
        }
        if not s.greedy:
            payload["top_p"] = s.top_p
        if s.seed is not None:
            payload["seed"] = s.seed + sample
        if s.stop:
            payload["stop"] = list(s.stop)
        for attempt in range(self.retries + 1):
            try:
                return self._reply(self._post(payload))
            except urllib.error.HTTPError as error:
                detail = " ".join(error.read().decode(errors="replace").split())[:300]
                if error.code not in RETRY_STATUS or attempt == self.retries:
                    raise ConnectionError(
                        f"{self.url}: HTTP {error.code}: {detail}: check the server and the "
                        "model name, then rerun with --resume"
                    ) from None
                reason = f"HTTP {error.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt == self.retries:
                    raise ConnectionError(
                        f"{self.url}: no answer after {self.retries + 1} attempts ({error}): start "
                        "the server or fix --base-url, then rerun with --resume"
                    ) from None
                reason = str(error)
            delay = self.backoff * 2**attempt
            logger.warning("%s: %s, retry %d in %.1f s", self.url, reason, attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _reply(self, body: Any) -> Reply:
        try:
            choice = body["choices"][0]
            message = choice["message"]
            content = message.get("content") or ""
            usage = body.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{self.url}: not an OpenAI chat completion (no {error}): check --base-url"
            ) from None
        separate = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(separate, str):
            reasoning, text = separate.strip(), content.strip()
        else:
            reasoning, text = split_reasoning(content)
        return Reply(
            text=text,
            reasoning=reasoning,
            prompt_tokens=usage.get("prompt_tokens"),
            output_tokens=usage.get("completion_tokens"),
            truncated=choice.get("finish_reason") == "length",
        )

    def stream(self, requests: Sequence[Request]) -> Iterator[tuple[int, list[Reply]]]:
        """Every sample is a request of its own; a request's replies are yielded once all its
        samples are in. After a failure nothing new is sent, the requests in flight finish
        (their complete requests are still yielded), then the failure is raised."""
        replies: dict[int, dict[int, Reply]] = {}
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            jobs = {
                pool.submit(self.complete, request, k): (i, k)
                for i, request in enumerate(requests)
                for k in range(request.sampling.n)
            }
            order = {future: n for n, future in enumerate(jobs)}
            pending = set(jobs)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in sorted(done, key=order.__getitem__):
                        if future.cancelled() or future.exception() is not None:
                            failure = failure or future.exception()
                            continue
                        i, k = jobs[future]
                        replies.setdefault(i, {})[k] = future.result()
                        n = requests[i].sampling.n
                        if len(replies[i]) == n:
                            yield i, [replies[i][x] for x in range(n)]
                    if failure is not None:
                        pending = {f for f in pending if not f.cancel()}  # those running finish
            finally:  # the caller stopped early: send nothing more
                for future in pending:
                    future.cancel()
        if failure is not None:
            raise failure


# ---- building a backend ----


@dataclass
class BackendConfig:
    """Which backend generates, and how it reaches a server; CLI flags map one to one (eval,
    generate and compress --method rewrite share them)."""

    backend: str = option(
        "transformers",
        choices=BACKENDS,
        group=BACKEND,
        help="transformers (local generate, batched, KV cache; CPU or GPU), vllm (offline "
        "engine, when installed), http (an OpenAI-compatible server: vLLM, SGLang, llama.cpp, "
        "`transformers serve`; the model is the served name).",
    )
    base_url: str = option(
        "http://127.0.0.1:8000/v1", group=BACKEND, help="http: the server's base URL."
    )
    api_key_env: str = option(
        "OPENAI_API_KEY",
        group=BACKEND,
        help="http: the environment variable holding the API key (sent as a bearer token "
        "when set).",
    )
    concurrency: int = option(8, minimum=1, group=BACKEND, help="http: requests in flight.")
    timeout: float = option(600.0, above=0, group=BACKEND, help="http: seconds per request.")
    retries: int = option(
        4, minimum=0, group=BACKEND, help="http: attempts after the first, backing off 1, 2, 4 s..."
    )
    tensor_parallel_size: int = option(
        1, minimum=1, group=BACKEND, help="vllm: GPUs the engine shards the model over."
    )
    engine_options: dict[str, Any] = option(
        default_factory=dict, cli=False, help="vllm: further `vllm.LLM` arguments."
    )

    def __post_init__(self) -> None:
        check_ranges(self)


def make_generator(
    model: str | Path,
    config: BackendConfig | None = None,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    compile: bool = False,
) -> Generator:
    """The backend `config` names, for `model` (a folder, hub id or .gguf; the served name
    for http). `device`, `batch_size` and `compile` apply to the transformers backend."""
    config = config or BackendConfig()
    if config.backend == "http":
        return HTTPGenerator(
            config.base_url,
            str(model),
            api_key=os.environ.get(config.api_key_env) or None,
            concurrency=config.concurrency,
            timeout=config.timeout,
            retries=config.retries,
        )
    if config.backend == "vllm":
        return VLLMGenerator(
            model, tensor_parallel_size=config.tensor_parallel_size, **config.engine_options
        )
    return TransformersGenerator(model, device=device, batch_size=batch_size, compile=compile)
