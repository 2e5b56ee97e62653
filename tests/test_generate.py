"""The generation layer (cd_fast.generate) and `cdfast generate`: reply parsing against a real
loopback HTTP server, the transformers backend's seeds and truncation, a server that dies
mid-run, a SIGKILL mid-run against the real `transformers serve`, and questions -> traces ->
compress -> train -> eval end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from cd_fast.bench.serve import free_port
from cd_fast.cli import main
from cd_fast.data import DataError, TraceReader
from cd_fast.generate import (
    BackendConfig,
    HTTPGenerator,
    Request,
    Sampling,
    TransformersGenerator,
    make_generator,
    split_reasoning,
)
from cd_fast.teacher import kept_samples

REPO = Path(__file__).resolve().parents[1]


# ---- the layer's pieces ----


@pytest.mark.parametrize(
    ("text", "reasoning", "reply"),
    [
        ("<think>\nadd 2 and 2\n</think>\n\nAnswer: 4", "add 2 and 2", "Answer: 4"),
        ("add 2 and 2\n</think>\nAnswer: 4", "add 2 and 2", "Answer: 4"),  # tag in the prompt
        ("<think>\nadd 2 and", "add 2 and", ""),  # cut off inside the reasoning
        ("  Answer: 4\n", None, "Answer: 4"),  # no reasoning of its own
    ],
    ids=["tags", "no-opening-tag", "cut-off", "plain"],
)
def test_split_reasoning(text, reasoning, reply):
    assert split_reasoning(text) == (reasoning, reply)


def test_sampling_refuses_what_no_backend_can_do():
    with pytest.raises(ValueError, match="temperature above 0"):
        Sampling(max_new_tokens=8, n=2)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(max_new_tokens=8, temperature=0.6, top_p=0)


def test_question_files_read_without_traces(qwen3):
    """items.json holds bare prompts: generate and eval read them (gold, grader kept in meta);
    a command that needs traces refuses them as before."""
    questions = list(TraceReader(qwen3.items, need_traces=False))
    assert len(questions) == 200 and all(q.trace == "" and q.question for q in questions)
    first = questions[0]
    assert first.id == "arith-00-0" and first.gold == "670"
    assert first.meta["grader"] == "numeric" and first.meta["type"] == "arith"
    with pytest.raises(DataError, match="cannot detect the layout"):
        next(iter(TraceReader(qwen3.items)))


def test_keep_modes_choose_samples():
    samples = [
        {"correct": False, "output_tokens": 5},
        {"correct": True, "output_tokens": 30},
        {"correct": True, "output_tokens": 20},
        {"correct": True, "output_tokens": 20},
    ]
    assert kept_samples(samples, "all") == [0, 1, 2, 3]
    assert kept_samples(samples, "correct") == [1, 2, 3]
    assert kept_samples(samples, "shortest-correct") == [2]  # ties: the first sample
    assert kept_samples(samples[:1], "shortest-correct") == []


# ---- a real HTTP server on loopback, answering like a reasoning model ----


class StubServer:
    """An OpenAI-compatible chat server whose replies are a function of the request: reasoning
    "steps for <question>" and answer "Answer: <n>" (n from the question's first number), in one
    of three shapes servers use: `reasoning_content` (vLLM, transformers serve), `reasoning`
    (newer vLLM) or `<think>` tags in the content (llama.cpp, servers without a parser). After
    `die_after` replies it hangs up on the next request and stops listening, as a crashed
    server does."""

    def __init__(self, shape: str, port: int | None = None, die_after: int | None = None):
        self.shape = shape
        self.die_after = die_after
        self.requests: list[dict] = []
        self.keys: list[str | None] = []  # the Authorization header of each request
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if stub.die_after is not None and len(stub.requests) >= stub.die_after:
                    self.close_connection = True  # hang up without a reply, then go away
                    threading.Thread(target=stub.close).start()
                    return
                stub.requests.append(body)
                stub.keys.append(self.headers.get("Authorization"))
                reply = json.dumps(stub.reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, body: dict) -> dict:
        question = body["messages"][-1]["content"]
        number = next((w for w in question.replace("$", " ").split() if w.isdigit()), "0")
        reasoning = f"steps for {question[:40]} (seed {body.get('seed')})"
        answer = f"Answer: {number}"
        message = {"role": "assistant", "content": answer}
        if self.shape == "think":
            message["content"] = f"<think>\n{reasoning}\n</think>\n\n{answer}"
        else:
            message[self.shape] = reasoning
        return {
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(question.split()), "completion_tokens": 7},
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("shape", ["reasoning_content", "reasoning", "think"])
def test_http_replies_parse_alike_in_every_server_shape(shape):
    server = StubServer(shape)
    try:
        generator = HTTPGenerator(server.url, "teacher", concurrency=2, retries=0)
        sampling = Sampling(max_new_tokens=32, temperature=0.6, n=2, seed=10)
        (replies,) = generator.generate([Request.user("What is 3 + 4?", sampling)])
    finally:
        server.close()
    assert [r.text for r in replies] == ["Answer: 3", "Answer: 3"]
    assert [r.reasoning for r in replies] == [
        "steps for What is 3 + 4? (seed 10)",
        "steps for What is 3 + 4? (seed 11)",  # sample k is sent with seed + k
    ]
    assert all(r.output_tokens == 7 and not r.truncated for r in replies)
    assert {b["max_tokens"] for b in server.requests} == {32}


def test_the_api_key_comes_from_the_named_environment_variable(monkeypatch):
    server = StubServer("reasoning_content")
    monkeypatch.setenv("CD_FAST_TEST_KEY", "sk-test")
    try:
        config = BackendConfig(backend="http", base_url=server.url, api_key_env="CD_FAST_TEST_KEY")
        make_generator("teacher", config).generate([Request.user("Hi", Sampling(8))])
        monkeypatch.delenv("CD_FAST_TEST_KEY")
        make_generator("teacher", config).generate([Request.user("Hi", Sampling(8))])
    finally:
        server.close()
    assert server.keys == ["Bearer sk-test", None]


def test_http_generator_retries_then_fails_clearly():
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    generator = HTTPGenerator(dead, "m", concurrency=1, timeout=2, retries=2, backoff=0.01)
    tic = time.perf_counter()
    with pytest.raises(ConnectionError, match="no answer after 3 attempts"):
        generator.generate([Request.user("hello", Sampling(max_new_tokens=8))])
    assert time.perf_counter() - tic >= 0.03  # backed off 0.01 + 0.02


def cli(capsys, *args: object) -> tuple[int, str, str]:
    """`cdfast ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def generate_over(server: StubServer, capsys, source: Path, out: Path, *flags: object):
    """`cdfast generate SOURCE -o OUT FLAGS` against `server`, closed afterwards."""
    try:
        http = ["--backend", "http", "--base-url", server.url, "--model", "teacher"]
        return cli(capsys, "generate", source, "-o", out, *http, *flags)
    finally:
        server.close()


def test_a_server_that_dies_mid_run_loses_nothing(shared_data, tmp_path, capsys):
    source = shared_data / "gsm8k" / "test.jsonl"
    flags = ["--limit", "8", "--n", "2", "--concurrency", "1", "--retries", "1", "--timeout", "5"]
    code, _, err = generate_over(StubServer("think"), capsys, source, tmp_path / "a.jsonl", *flags)
    assert code == 0, err

    dying = StubServer("think", die_after=7)  # dies inside the 4th question
    out = tmp_path / "b.jsonl"
    code, _, err = generate_over(dying, capsys, source, out, *flags)
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert dying.url in lines[0] and "--resume" in lines[0]
    ledger = tmp_path / "b.jsonl.samples.jsonl"
    assert len(ledger.read_text().splitlines()) == 3  # every finished question kept
    assert not out.exists()

    again = StubServer("think", port=dying.server.server_address[1])
    code, stdout, err = generate_over(again, capsys, source, out, *flags, "--resume")
    assert code == 0, err
    assert len(again.requests) == 10  # the 5 questions left, twice each
    assert out.read_bytes() == (tmp_path / "a.jsonl").read_bytes()
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 16 and records[0]["id"].endswith("#0")
    assert records[0]["trace"].startswith("steps for") and records[0]["answer"].startswith("Answer")
    summary = json.loads((tmp_path / "b.jsonl.summary.json").read_text())
    assert summary["questions"] == 8 and summary["samples"] == 16 and "pass_at_2" in summary
    assert "accuracy" in stdout and "pass@2" in stdout


def test_a_torn_ledger_line_is_dropped_on_resume(shared_data, tmp_path, capsys):
    """A kill in the middle of a ledger line: --resume cuts it, asks that question again and
    writes what the finished run wrote."""
    source = shared_data / "gsm8k" / "test.jsonl"
    out = tmp_path / "a.jsonl"
    flags = ["--limit", "3", "--concurrency", "1"]
    assert generate_over(StubServer("think"), capsys, source, out, *flags)[0] == 0
    straight = out.read_bytes()
    ledger = tmp_path / "a.jsonl.samples.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    ledger.write_bytes(b"".join(lines[:2]) + lines[2][:40])  # the 3rd question half-written
    server = StubServer("think")
    code, _, err = generate_over(server, capsys, source, out, *flags, "--resume")
    assert code == 0, err
    assert len(server.requests) == 1 and out.read_bytes() == straight
    assert len(ledger.read_bytes().splitlines()) == 3


def test_an_empty_question_is_one_line(tmp_path, capsys):
    source = tmp_path / "q.jsonl"
    source.write_text('{"id": "a", "question": "What is 2 + 2?"}\n{"id": "b", "question": " "}\n')
    out = tmp_path / "o.jsonl"
    code, _, err = generate_over(StubServer("think"), capsys, source, out, "--batch-size", "1")
    assert code == 2 and "record 'b' (record 2 of the input) has an empty question" in err
    assert len((tmp_path / "o.jsonl.samples.jsonl").read_text().splitlines()) == 1


# ---- the transformers backend ----


@pytest.fixture(scope="module")
def tiny_generator(tiny_models) -> TransformersGenerator:
    return TransformersGenerator(tiny_models["qwen2"], device="cpu", batch_size=4)


def test_transformers_seeded_samples_are_reproducible(tiny_generator):
    def sample(seed: int, *questions: str) -> list[list[str]]:
        sampling = Sampling(max_new_tokens=6, temperature=1.0, n=3, seed=seed)
        replies = tiny_generator.generate([Request.user(q, sampling) for q in questions])
        return [[r.text for r in samples] for samples in replies]

    first = sample(5, "What is 2 + 2?", "Name a prime.")
    assert sample(5, "What is 2 + 2?", "Name a prime.") == first
    assert sample(5, "What is 2 + 2?") == first[:1]  # not tied to its batch's company
    assert len(set(first[0])) > 1  # the n samples differ
    assert sample(6, "What is 2 + 2?") != first[:1]


def test_transformers_truncation_is_flagged(tiny_generator, smollm2_dir):
    (cut,) = tiny_generator.generate([Request.user("Count to 100.", Sampling(max_new_tokens=4))])
    assert cut[0].truncated and cut[0].output_tokens == 4 and cut[0].prompt_tokens > 4
    model = TransformersGenerator(smollm2_dir, device="cpu")
    (done,) = model.generate(
        [Request.user("What is 2 + 2? Reply with the number only.", Sampling(max_new_tokens=40))]
    )
    assert not done[0].truncated and 0 < done[0].output_tokens < 40 and "4" in done[0].text


# ---- the real server: a SIGKILL mid-run, and the whole pipeline from questions ----


def spawn(*args: object, kill_at_fsync: int | None = None) -> subprocess.CompletedProcess:
    launcher = ["-m", "cd_fast.cli"]
    if kill_at_fsync is not None:
        launcher = [str(REPO / "tests" / "interrupt.py"), "os:fsync", str(kill_at_fsync)]
    return subprocess.run(
        [sys.executable, *launcher, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        cwd=REPO,
        timeout=600,
    )


def test_generate_over_http_killed_resumes_byte_identical(
    served_smollm2, smollm2_dir, shared_data, tmp_path
):
    source = shared_data / "gsm8k" / "test.jsonl"
    common = ["--limit", "5", "--max-new-tokens", "12", "--temperature", "0", "--backend", "http"]
    common += ["--base-url", served_smollm2, "--model", smollm2_dir, "--concurrency", "1"]
    straight = spawn("generate", source, "-o", tmp_path / "a.jsonl", *common)
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "b.jsonl"
    # fsyncs: the manifest, then one per question: killed at the 3rd question's (its line was
    # written: the kernel keeps it), before the 4th question is asked
    killed = spawn("generate", source, "-o", out, *common, kill_at_fsync=4)
    assert killed.returncode == -9
    assert len((tmp_path / "b.jsonl.samples.jsonl").read_text().splitlines()) == 3
    resumed = spawn("generate", source, "-o", out, *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert out.read_bytes() == (tmp_path / "a.jsonl").read_bytes()
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 5 and all(r["trace"] for r in records)
    assert all(r["meta"]["generation"]["output_tokens"] <= 12 for r in records)


def test_questions_to_student_over_http_and_transformers(
    served_smollm2, smollm2_dir, tiny_models, shared_data, tmp_path, capsys
):
    """The quickstart from questions: 20 GSM8K questions -> SmolLM2's traces (served, and
    local) -> compressed -> a student trained on them -> evaluated, locally and over HTTP."""
    source = shared_data / "gsm8k" / "test.jsonl"
    sampling = ["--limit", "20", "--max-new-tokens", "16", "--batch-size", "20"]
    outputs = {}
    for backend in ("http", "transformers"):
        out = tmp_path / f"traces-{backend}.jsonl"
        where = ["--base-url", served_smollm2, "--concurrency", "4"] if backend == "http" else []
        code, stdout, err = cli(
            capsys,
            "generate",
            source,
            "-o",
            out,
            "--model",
            smollm2_dir,
            *sampling,
            "--backend",
            backend,
            *where,
            "--device",
            "cpu",
        )
        assert code == 0, err[-2000:]
        records = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(records) == 20 and all(r["trace"].strip() for r in records)
        summary = json.loads(Path(f"{out}.summary.json").read_text())
        assert summary["questions"] == 20 and summary["output_tokens"] > 0
        assert summary["output_tokens_per_s"] > 0
        outputs[backend] = out
    compressed = tmp_path / "compressed.jsonl"
    code, stdout, err = cli(
        capsys,
        "compress",
        outputs["http"],
        "-o",
        compressed,
        "--method",
        "truncate",
        "--budget",
        "0.5",
        "--tokenizer",
        smollm2_dir,
    )
    assert code == 0, err[-2000:]
    student = tmp_path / "student"
    code, stdout, err = cli(
        capsys,
        "train",
        compressed,
        "-o",
        student,
        "--model",
        tiny_models["qwen2"],
        "--max-steps",
        "2",
        "--max-tokens-per-step",
        "1024",
        "--device",
        "cpu",
    )
    assert code == 0, err[-2000:]
    evals = tmp_path / "evals"
    questions = ["--limit", "4", "--max-new-tokens", "8"]
    code, stdout, err = cli(
        capsys,
        "eval",
        source,
        "-o",
        evals / "teacher",
        "--model",
        smollm2_dir,
        *questions,
        "--backend",
        "http",
        "--base-url",
        served_smollm2,
    )
    assert code == 0, err[-2000:]
    code, stdout, err = cli(
        capsys,
        "eval",
        source,
        "-o",
        evals / "student",
        "--model",
        student / "final",
        *questions,
        "--device",
        "cpu",
        "--baseline",
        evals / "teacher",
    )
    assert code == 0, err[-2000:]
    metrics = json.loads((evals / "student" / "metrics.json").read_text())
    vs = metrics["vs_baseline"]
    assert vs["asked_budget"] == 0.5 and 0.3 < vs["training_ratio"] <= 0.55
    assert vs["inference_length_ratio"] is not None
    assert "training ratio" in stdout and "inference length ratio" in stdout


# ---- vLLM (a GPU with vLLM installed) ----


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vllm_generates_and_evaluates(tiny_models, shared_data, tmp_path, capsys):
    """20 GSM8K questions through vLLM's offline engine: `cdfast generate` (2 seeded samples
    each, the same on a rerun) and `cdfast eval`, with a tiny random Qwen2 saved locally (the
    GPU machine has no network for Qwen2.5-0.5B-Instruct)."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    source = shared_data / "gsm8k" / "test.jsonl"
    model = tiny_models["qwen2"]
    common = ["--limit", "20", "--backend", "vllm", "--model", model, "--max-new-tokens", "16"]
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.jsonl"
        code, _, err = cli(capsys, "generate", source, "-o", out, *common, "--n", "2")
        assert code == 0, err[-2000:]
        outputs.append(out.read_bytes())
    records = [json.loads(x) for x in outputs[0].decode().splitlines()]
    assert len(records) == 40 and all(r["meta"]["generation"]["output_tokens"] > 0 for r in records)
    assert outputs[0] == outputs[1]  # seeded per question
    code, _, err = cli(capsys, "eval", source, "-o", tmp_path / "eval", *common)
    assert code == 0, err[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["records"] == 20 and metrics["mean_output_tokens"] <= 16
