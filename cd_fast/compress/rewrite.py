"""Generative rewriting backends: an instruct model rewrites each trace from a prompt template.

- LocalRewriter: transformers `generate`, batched with left padding and a KV cache, greedy.
- HTTPRewriter: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, llama.cpp
  server, `transformers serve`), with bounded concurrency, timeouts and retries with backoff.
- VLLMRewriter: vLLM's offline engine (`vllm.LLM.chat`), when vLLM is installed.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def prompt_template(level: int, path: str | Path | None = None) -> str:
    """The packaged template of a level (1 delete words, 2 concise, 3 draft), or a user file."""
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
    else:
        text = (resources.files("cd_fast.compress") / "prompts" / f"level{level}.txt").read_text(
            encoding="utf-8"
        )
    if "{trace}" not in text:
        raise ValueError(f"{path or f'level{level}.txt'}: the prompt template needs {{trace}}")
    return text


def fill_template(template: str, question: str, trace: str, target_words: int) -> str:
    values = {"question": question, "trace": trace, "target_words": target_words}
    # str.replace, not str.format: traces are full of braces (LaTeX, code)
    for key, value in values.items():
        template = template.replace("{" + key + "}", str(value))
    return template


class Rewriter(Protocol):
    def generate(self, prompts: list[str], max_new_tokens: list[int]) -> list[str]: ...


class LocalRewriter:
    """Batched greedy generation with a local transformers model (GPU or CPU)."""

    def __init__(self, spec: str | Path, device: str | None = None, batch_size: int = 8):
        from cd_fast.models import load_generator

        self.model, self.tokenizer = load_generator(spec, device=device)
        self.batch_size = batch_size

    def generate(self, prompts: list[str], max_new_tokens: list[int]) -> list[str]:
        from cd_fast.models import generate_greedy

        outputs: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            replies = generate_greedy(
                self.model, self.tokenizer, prompts[chunk], max_new_tokens[chunk]
            )
            outputs += [text for text, _, _ in replies]
        return outputs


class HTTPRewriter:
    """OpenAI-compatible chat completions over HTTP, `concurrency` requests in flight."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None,
        concurrency: int,
        timeout: float,
        retries: int,
        backoff: float = 1.0,
    ):
        """Settings as CompressConfig names them (its defaults are the recommended ones);
        `backoff` seconds double with every retry."""
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
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

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
        }
        for attempt in range(self.retries + 1):
            try:
                body = self._post(payload)
                return (body["choices"][0]["message"]["content"] or "").strip()
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:300]
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
            except (KeyError, IndexError, json.JSONDecodeError) as error:
                raise ValueError(f"{self.url}: not an OpenAI chat completion: {error}") from None
            delay = self.backoff * 2**attempt
            logger.warning("%s: %s, retry %d in %.1f s", self.url, reason, attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def generate(self, prompts: list[str], max_new_tokens: list[int]) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.complete, prompts, max_new_tokens))


class VLLMRewriter:
    """vLLM's offline engine: continuous batching over the whole batch of prompts."""

    def __init__(self, spec: str, **engine_options: Any):
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("backend vllm needs vLLM: pip install vllm") from None
        self.llm = LLM(model=str(spec), **engine_options)

    def generate(self, prompts: list[str], max_new_tokens: list[int]) -> list[str]:
        from vllm import SamplingParams

        params = [SamplingParams(temperature=0.0, max_tokens=n) for n in max_new_tokens]
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        results = self.llm.chat(conversations, params, use_tqdm=False)
        return [r.outputs[0].text.strip() for r in results]


def make_rewriter(config: Any) -> Rewriter:
    """The backend a CompressConfig asks for."""
    if config.backend == "local":
        return LocalRewriter(
            config.rewriter, device=config.device, batch_size=config.generation_batch_size
        )
    if config.backend == "http":
        return HTTPRewriter(
            config.base_url,
            config.rewriter,
            api_key=config.api_key,
            concurrency=config.concurrency,
            timeout=config.timeout,
            retries=config.retries,
        )
    return VLLMRewriter(config.rewriter)
