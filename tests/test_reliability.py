"""Bad input and interruptions across the commands (segment, compress, score, train, eval,
generate).

Every bad-input case ends in exactly one `cdfast CMD: error: ...` line and exit 2 (never a
traceback, never exit 0 with nothing said), or in a counted warning where carrying on is right.
Every interrupted run - SIGKILL at kill points drawn at random with a fixed seed, and torn writes
cut at random bytes - resumes to the output of an uninterrupted run: byte for byte, and for
train the same losses and weights. The in-process cases call `cd_fast.cli.main`; kills run
`cdfast` in a subprocess through tests/interrupt.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cd_fast.cli import build_parser, main
from cd_fast.compress.job import _read_state
from cd_fast.runs import RunLock
from cd_fast.score import ScoreStore

REPO = Path(__file__).resolve().parents[1]
KILLS = random.Random(20261123)  # the kill points: random, and the same on every run
COMMANDS = ("segment", "compress", "score", "train", "eval", "generate", "sweep")


# ---- running a command ----


def run(capsys, *args: object) -> tuple[int, str, str]:
    """`cdfast ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse refusing an option value
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(result: tuple[int, str, str], *phrases: str) -> str:
    """Exit 2 with one error line holding every phrase, and no traceback."""
    code, _, err = result
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err[-2000:]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def assert_ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    return out


def spawn(*args: object, kill: tuple[str, int] | None = None, limit_bytes: int | None = None):
    """`cdfast ARGS` in a subprocess, offline; `kill=(target, n)` SIGKILLs it at the n-th call
    of `target` (tests/interrupt.py); with `limit_bytes` no file it writes may grow past that
    size (a full disk, as the kernel reports a file size limit: EFBIG)."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    launcher = ["-m", "cd_fast.cli"]
    if kill:
        launcher = [str(REPO / "tests" / "interrupt.py"), kill[0], str(kill[1])]
    return subprocess.run(
        [sys.executable, *launcher, *map(str, args)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "CD_FAST_PROGRESS_SECONDS": "0.01",
        },
        cwd=REPO,
        timeout=600,
        preexec_fn=limit_files if limit_bytes else None,
    )


# ---- inputs ----


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def records(shared_data) -> list[dict]:
    """24 GSM8K questions as trace records with ids and gold answers."""
    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").open()][:24]
    out = []
    for number, row in enumerate(rows):
        body, _, gold = row["answer"].rpartition("####")
        out.append(
            {
                "id": f"q{number}",
                "question": row["question"],
                "trace": body.strip(),
                "gold": gold.strip(),
            }
        )
    return out


@pytest.fixture(scope="module")
def files(records, tmp_path_factory) -> dict[str, Path]:
    """Good and bad input files, each what a user could hand to any command."""
    root = tmp_path_factory.mktemp("inputs")
    good = write_jsonl(root / "good.jsonl", records)
    lines = good.read_bytes()
    paths = {"good": good}
    paths["bom"] = root / "bom.jsonl"
    paths["bom"].write_bytes(b"\xef\xbb\xbf" + lines)
    paths["not_gzip"] = root / "mislabelled.jsonl.gz"
    paths["not_gzip"].write_bytes(lines)
    paths["truncated_gzip"] = root / "truncated.jsonl.gz"
    paths["truncated_gzip"].write_bytes(gzip.compress(lines)[:-40])
    paths["empty"] = root / "empty.jsonl"
    paths["empty"].write_text("")
    paths["duplicate_ids"] = write_jsonl(root / "dup.jsonl", [*records[:3], records[1]])
    paths["invalid_json"] = root / "invalid.jsonl"
    paths["invalid_json"].write_text(json.dumps(records[0]) + '\n{"id": "x", "trace": \n')
    paths["all_invalid"] = write_jsonl(root / "bad.jsonl", [{"id": "a"}, {"id": "b"}])
    paths["no_gold"] = write_jsonl(root / "nogold.jsonl", [{**r, "gold": None} for r in records])
    empties = [{**r, "trace": ""} if i % 3 == 0 else r for i, r in enumerate(records[:12])]
    paths["empty_traces"] = write_jsonl(root / "empty_traces.jsonl", empties)
    return paths


@pytest.fixture(scope="module")
def student(tiny_models) -> Path:
    return tiny_models["qwen2"]


def command_args(command: str, source: Path, out: Path, student: Path) -> list[object]:
    """The cheapest useful run of each command on `source`."""
    options = {
        "segment": "",
        "compress": "--method truncate --budget 0.5 --batch-size 4",
        "score": "--shard-size 4 --device cpu",
        "train": "--max-steps 4 --max-tokens-per-step 1024 --max-seq-length 256 "
        "--logging-steps 1 --save-steps 2 --device cpu --learning-rate 3e-3 "
        "--lr-scheduler-type constant",
        "eval": "--max-new-tokens 4 --batch-size 4 --device cpu",
        "generate": "--max-new-tokens 4 --batch-size 4 --device cpu --temperature 0",
        "sweep": "--methods truncate --budgets 0.5 --epochs 1 --tokens-per-step 1024 "
        "--max-seq-length 256 --max-new-tokens 4 --eval-batch-size 4 --holdout 4 --device cpu",
    }[command].split()
    model = {"compress": ["--tokenizer", student], "segment": [], "sweep": ["--student", student]}
    model = model.get(command, ["--model", student])
    return [command, source, "-o", out, *options, *model]


# ---- bad input files, in every command ----

BAD_FILES = {
    "not_gzip": "corrupt or truncated gzip",
    "truncated_gzip": "corrupt or truncated gzip",
    "empty": "no records",
    "duplicate_ids": "duplicate id 'q1' (first at line 2)",
    "invalid_json": "line 2: invalid JSON",
    "all_invalid": "cannot detect the layout",
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("bad", sorted(BAD_FILES))
def test_bad_input_file_is_one_line_in_every_command(
    command, bad, files, student, tmp_path, capsys
):
    out = tmp_path / "out"
    line = assert_error(
        run(capsys, *command_args(command, files[bad], out, student)), BAD_FILES[bad]
    )
    assert f"cdfast {command}: error: {files[bad]}" in line
    # the folder is clean (at most a new run's manifest and an empty predictions file), or, when
    # the file breaks after whole batches, holds them for --resume
    left = {p.name: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    if bad == "truncated_gzip":
        return
    assert set(left) <= {"run.json", "manifest.json", "predictions.jsonl"}, left
    assert left.get("predictions.jsonl", 0) == 0


def test_all_invalid_with_skip_invalid_is_an_error_not_an_empty_success(files, tmp_path, capsys):
    assert_error(
        run(capsys, "segment", files["all_invalid"], "-o", tmp_path / "o.jsonl", "--skip-invalid"),
        "all 2 records are invalid",
    )
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("command", ("segment", "compress"))
def test_a_utf8_bom_is_read(command, files, student, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert_ok(run(capsys, *command_args(command, files["bom"], out, student)))
    assert [json.loads(x)["id"] for x in out.open()] == [f"q{i}" for i in range(24)]


def test_duplicate_ids_are_counted_skips_with_skip_invalid(files, tmp_path, capsys):
    out = assert_ok(
        run(capsys, "segment", files["duplicate_ids"], "-o", tmp_path / "o.jsonl", "--skip-invalid")
    )
    assert "skipped 1 invalid record" in out and "duplicate id" in out


def test_output_equal_to_input_is_refused_and_the_input_kept(files, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(files["good"].read_bytes())
    assert_error(run(capsys, "segment", source, "-o", source), "the output is also an input")
    assert source.read_bytes() == files["good"].read_bytes()


@pytest.mark.parametrize("command", ("score", "train", "eval"))
def test_output_folder_that_is_a_file_is_refused(command, files, student, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    assert_error(run(capsys, *command_args(command, files["good"], out, student)), "is a file")
    assert out.read_text() == "mine"


def test_output_under_a_file_is_one_line(files, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    out = tmp_path / "taken" / "out.jsonl"
    assert_error(run(capsys, "segment", files["good"], "-o", out), "choose another path")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_output_folder_is_one_line(command, files, student, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        out = folder / "out"
        assert_error(
            run(capsys, *command_args(command, files["good"], out, student)), "cannot write"
        )
    finally:
        folder.chmod(0o755)


# ---- option values, refused when parsed ----

ZERO_OPTIONS = [
    ("score", "--shard-size"),
    ("score", "--window"),
    ("score", "--max-tokens-per-batch"),
    ("eval", "--batch-size"),
    ("eval", "--max-new-tokens"),
    ("generate", "--n"),
    ("generate", "--max-new-tokens"),
    ("compress", "--batch-size"),
    ("train", "--max-tokens-per-step"),
    ("segment", "--threads"),
    ("sweep", "--tokens-per-step"),
]


@pytest.mark.parametrize(("command", "flag"), ZERO_OPTIONS)
def test_out_of_range_option_is_refused_at_parse_time(
    command, flag, files, student, tmp_path, capsys
):
    value = "-1" if flag == "--threads" else "0"
    args = [*command_args(command, files["good"], tmp_path / "o", student), flag, value]
    line = assert_error(run(capsys, *args), f"argument {flag}: must be >=")
    assert line.startswith(f"cdfast {command}: error:")
    assert not (tmp_path / "o").exists()


def test_every_option_has_help_and_its_default_once():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert "(default: None)" not in sub.format_help(), name
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            assert action.help and len(action.help) > 10, (name, action.option_strings)
            text = formatter._expand_help(action)
            assert text.lower().count("default") <= 1, (name, action.option_strings, text)


# ---- models that cannot be loaded ----


@pytest.mark.parametrize("command", ("score", "train", "eval"))
def test_missing_model_is_one_line_and_leaves_no_folder(command, files, tmp_path, capsys):
    out = tmp_path / "out"
    args = command_args(command, files["good"], out, tmp_path / "no-such-model")
    assert_error(run(capsys, *args), "no such model folder")
    assert not out.exists()


def test_missing_gguf_and_tokenizer_are_one_line(files, tmp_path, capsys):
    gguf = tmp_path / "model.gguf"
    assert_error(
        run(capsys, *command_args("train", files["good"], tmp_path / "o", gguf)),
        "no such .gguf file",
    )
    args = command_args("compress", files["good"], tmp_path / "c.jsonl", tmp_path / "tok")
    assert_error(run(capsys, *args), "no such model folder")
    (tmp_path / "tok").mkdir()  # a folder, but not a model's
    assert_error(run(capsys, *args), "cannot load model", "point to a transformers model folder")


def test_unusable_device_and_dead_rewrite_server_are_one_line(files, student, tmp_path, capsys):
    args = [*command_args("score", files["good"], tmp_path / "s", student), "--device", "tpu"]
    assert_error(run(capsys, *args), "--device 'tpu': expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        args[-1] = "cuda"
        assert_error(run(capsys, *args), "no CUDA GPU; use --device cpu")
    server = "--backend http --base-url http://127.0.0.1:9/v1 --rewriter m --retries 0 --timeout 2"
    rewrite = ["compress", files["good"], "-o", tmp_path / "r.jsonl", "--method", "rewrite"]
    rewrite += [*server.split(), "--tokenizer", student]
    assert_error(run(capsys, *rewrite), "no answer after 1 attempts", "--resume")
    assert not list(tmp_path.glob("r.jsonl*"))  # nothing was finished: nothing is left


def test_unknown_hub_id_is_one_line(files, tmp_path):
    hub_id = "nobody-xyz/no-such-model-0"
    result = spawn("score", files["good"], "-o", tmp_path / "s", "--model", hub_id)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"cannot load model '{hub_id}'" in result.stderr.splitlines()[-1]


# ---- empty traces, tables, progress ----


def test_empty_traces_pass_through_counted_not_compressed(files, student, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    printed = assert_ok(run(capsys, *command_args("compress", files["empty_traces"], out, student)))
    summary = json.loads((tmp_path / "c.jsonl.summary.json").read_text())
    assert summary["records_empty"] == 4 and summary["records_out"] == 12
    assert summary["ratio_mean"] > 0.45  # with the empty ones at 0 it would be about 0.4
    assert "4 passed through unchanged" in printed
    kept = [json.loads(x) for x in out.open()]
    assert [r["meta"]["compression"]["action"] for r in kept].count("empty") == 4


def test_eval_prints_a_table_and_progress_lines(files, student, tmp_path):
    result = spawn(*command_args("eval", files["good"], tmp_path / "e", student), "--limit", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy" in result.stdout and "(" in result.stdout and "{" not in result.stdout
    assert "\r" not in result.stderr  # a log, not a redrawn bar
    progress = [x for x in result.stderr.splitlines() if x.startswith("eval:")]
    assert progress and progress[-1].split("|")[-1].strip().startswith("8/8")
    assert "WARNING" not in result.stderr  # the CPU fallbacks are expected: info, not warnings


def test_compare_names_a_corrupt_or_missing_metrics_file(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for run_dir in (good, bad):
        run_dir.mkdir()
    metrics = dict(accuracy=0.5, mean_output_tokens=10.0, median_output_tokens=10)
    metrics.update(truncation_rate=0.0, accuracy_per_1k_tokens=50.0)
    (good / "metrics.json").write_text(json.dumps(metrics))
    (bad / "metrics.json").write_text('{"accuracy": 0.5, "mean_')
    assert_error(
        run(capsys, "eval", "--compare", good, bad), f"{bad / 'metrics.json'}: not valid JSON"
    )
    assert_error(run(capsys, "eval", "--compare", good, tmp_path / "none"), "not a finished")


# ---- resume refuses other settings; locks; failed runs leave folders usable ----


def test_compress_resume_refuses_other_settings_and_a_second_writer(
    files, student, tmp_path, capsys
):
    out = tmp_path / "c.jsonl"
    args = command_args("compress", files["good"], out, student)
    # a run killed after two batches
    killed = spawn(*args, kill=("cd_fast.compress.job:_chain", 3))
    assert killed.returncode == -9, killed.stderr[-2000:]
    changed = [a if a != "0.5" else "0.8" for a in args]
    assert_error(run(capsys, *changed, "--resume"), "budget 0.5 -> 0.8")
    assert_error(run(capsys, *args), "pass --resume")
    other = write_jsonl(
        tmp_path / "other.jsonl", [json.loads(x) for x in files["good"].open()][::-1]
    )
    other_args = [other if a == files["good"] else a for a in args]
    assert_error(run(capsys, *other_args, "--resume"), "records differ")
    with RunLock(tmp_path / "c.jsonl.lock", "c.jsonl"):
        assert_error(run(capsys, *args, "--resume"), "being written by another cdfast run")
    assert_ok(run(capsys, *args, "--resume"))


def test_compress_failing_in_its_first_batch_leaves_the_folder_clean(
    files, student, tmp_path, capsys
):
    out = tmp_path / "c.jsonl"
    args = command_args("compress", files["invalid_json"], out, student)
    assert_error(run(capsys, *args), "invalid JSON")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert_ok(run(capsys, *command_args("compress", files["good"], out, student)))


def test_score_resume_refuses_other_settings_and_failed_start_is_clean(
    files, student, tmp_path, capsys
):
    out = tmp_path / "s"
    args = command_args("score", files["good"], out, student)
    killed = spawn(*args, kill=("cd_fast.score.job:write_shard", 2))
    assert killed.returncode == -9
    assert_error(run(capsys, *args, "--overlap", "8", "--resume"), "overlap 256 -> 8")
    assert_error(run(capsys, *args), "pass --resume")
    fresh = tmp_path / "fresh"
    assert_error(
        run(capsys, *command_args("score", files["good"], fresh, tmp_path / "typo")),
        "no such model",
    )
    assert_ok(run(capsys, *command_args("score", files["good"], fresh, student), "--limit", "4"))


def test_eval_resume_refuses_other_settings(files, student, tmp_path, capsys):
    out = tmp_path / "e"
    args = [*command_args("eval", files["good"], out, student), "--limit", "8"]
    killed = spawn(*args, kill=("os:fsync", 4))  # after the first batch of predictions
    assert killed.returncode == -9
    assert_error(run(capsys, *args, "--max-new-tokens", "6", "--resume"), "max_new_tokens 4 -> 6")
    assert_error(run(capsys, *args), "pass --resume")
    no_gold = command_args("eval", files["no_gold"], tmp_path / "g", student)
    assert_error(run(capsys, *no_gold), "has no gold answer")


def test_train_refuses_finished_output_and_other_settings_on_resume(
    files, student, tmp_path, capsys
):
    out = tmp_path / "t"
    args = command_args("train", files["good"], out, student)
    assert_ok(run(capsys, *args))
    assert_error(run(capsys, *args), "holds a finished model")
    assert_error(
        run(capsys, *args, "--resume", "--learning-rate", "1e-3"), "learning_rate 0.003 -> 0.001"
    )
    other = write_jsonl(
        tmp_path / "other.jsonl", [json.loads(x) for x in files["good"].open()][:12]
    )
    other_args = [other if a == files["good"] else a for a in args]
    assert_error(run(capsys, *other_args, "--resume"), "data", "another file")
    rows = (out / "metrics.jsonl").read_text()
    assert_ok(run(capsys, *args, "--overwrite-output-dir"))
    assert (out / "metrics.jsonl").read_text().count('"step": 1,') == 1
    assert [json.loads(x)["loss"] for x in rows.splitlines()] == [
        json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
    ]


# ---- a full disk ----


def test_full_disk_is_one_line_and_resumes_exactly(files, student, tmp_path, capsys):
    args = command_args("compress", files["good"], tmp_path / "straight.jsonl", student)
    assert_ok(run(capsys, *args))
    out = tmp_path / "c.jsonl"
    args = command_args("compress", files["good"], out, student)
    full = spawn(*args, limit_bytes=6000)
    assert full.returncode == 2, full.stderr[-2000:]
    assert (
        "no space left writing" in full.stderr.splitlines()[-1] and "Traceback" not in full.stderr
    )
    assert_ok(run(capsys, *args, "--resume"))
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()

    segment = spawn("segment", files["good"], "-o", tmp_path / "s.jsonl", limit_bytes=4000)
    assert segment.returncode == 2 and "no space left" in segment.stderr.splitlines()[-1]
    assert not (tmp_path / "s.jsonl").exists()

    train_args = command_args("train", files["good"], tmp_path / "t", student)
    train = spawn(*train_args, limit_bytes=1 << 20)
    assert train.returncode == 2 and "Traceback" not in train.stderr, train.stderr[-2000:]
    assert "no space left writing" in train.stderr.splitlines()[-1]
    assert not list((tmp_path / "t").glob("*checkpoint-*"))


# ---- kills at random points resume exactly ----


@pytest.fixture(scope="module")
def straight(files, student, tmp_path_factory) -> dict[str, Path]:
    """Each command's uninterrupted run, the output a resumed one must equal."""
    root = tmp_path_factory.mktemp("straight")
    outputs = {"compress": root / "c.jsonl", "score": root / "s", "eval": root / "e"}
    for command, out in outputs.items():
        extra = ["--limit", "12"] if command == "eval" else []
        assert (
            main([str(a) for a in command_args(command, files["good"], out, student)] + extra) == 0
        )
    return outputs


def _cut_torn(path: Path, keep: int) -> None:
    """Cut `path` at a random byte at or after `keep`: a write the kill interrupted."""
    size = path.stat().st_size if path.exists() else 0
    if size > keep:
        os.truncate(path, KILLS.randint(keep, size))


@pytest.mark.parametrize("kill", range(5))
def test_compress_killed_at_any_byte_resumes_exactly(
    kill, straight, files, student, tmp_path, capsys
):
    out = tmp_path / "c.jsonl"
    args = command_args("compress", files["good"], out, student)
    # fsyncs: the new run's two files, then records + state per batch (6 batches), the summary
    count = KILLS.randint(1, 15)
    assert spawn(*args, kill=("os:fsync", count)).returncode == -9
    state = tmp_path / "c.jsonl.state.jsonl"
    if state.exists():  # tear the last state line and what follows the committed records
        lines = state.read_bytes().splitlines(keepends=True)
        _cut_torn(state, sum(map(len, lines[:-1])))
        _cut_torn(tmp_path / "c.jsonl.partial", _read_state(state)[1].output_bytes)
    assert_ok(run(capsys, *args, "--resume"))
    assert out.read_bytes() == straight["compress"].read_bytes(), f"killed at fsync {count}"
    assert sorted(p.name for p in tmp_path.glob("c.jsonl*")) == ["c.jsonl", "c.jsonl.summary.json"]


def same_scores(a: Path, b: Path) -> bool:
    rows_a = {r.id: r.row() for r in ScoreStore(a)}
    rows_b = {r.id: r.row() for r in ScoreStore(b)}
    return rows_a.keys() == rows_b.keys() and all(
        all(np.array_equal(np.asarray(rows_a[i][k]), np.asarray(rows_b[i][k])) for k in rows_a[i])
        for i in rows_a
    )


@pytest.mark.parametrize("kill", range(2))
def test_score_killed_resumes_to_the_same_scores(kill, straight, files, student, tmp_path, capsys):
    out = tmp_path / "s"
    args = command_args("score", files["good"], out, student)
    count = KILLS.randint(1, 6)
    assert spawn(*args, kill=("cd_fast.score.job:write_shard", count)).returncode == -9
    assert_ok(run(capsys, *args, "--resume"))
    assert same_scores(out, straight["score"]), f"killed at shard {count}"


@pytest.mark.parametrize("kill", range(2))
def test_eval_killed_resumes_to_the_same_predictions(
    kill, straight, files, student, tmp_path, capsys
):
    out = tmp_path / "e"
    args = [*command_args("eval", files["good"], out, student), "--limit", "12"]
    count = KILLS.randint(2, 6)  # run.json, the predictions file, then one per batch of 4
    assert spawn(*args, kill=("os:fsync", count)).returncode == -9
    assert_ok(run(capsys, *args, "--resume"))
    expected = (straight["eval"] / "predictions.jsonl").read_bytes()
    assert (out / "predictions.jsonl").read_bytes() == expected, f"killed at fsync {count}"


@pytest.fixture(scope="module")
def straight_training(files, student, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "straight"
    code = main([str(a) for a in command_args("train", files["good"], out, student)])
    assert code == 0
    return out


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


@pytest.mark.parametrize(
    "target",
    [
        "cd_fast.train.optim:Optimization.update",
        "cd_fast.train.optim:Optimization.update",
        "cd_fast.train.checkpoint:save_file",  # inside a checkpoint's writing
    ],
)
def test_train_killed_resumes_to_the_same_losses_and_weights(
    target, straight_training, files, student, tmp_path, capsys
):
    out = tmp_path / "t"
    args = command_args("train", files["good"], out, student)
    count = KILLS.randint(1, 4) if "update" in target else KILLS.randint(1, 2)
    assert spawn(*args, kill=(target, count)).returncode == -9
    again = run(capsys, *args) if not list(out.glob("checkpoint-*")) else None
    if again is None:
        assert_error(run(capsys, *args), "pass --resume")
        assert_ok(run(capsys, *args, "--resume"))
    else:
        assert_ok(again)  # killed before its first checkpoint: a plain rerun starts over
    assert losses(out) == losses(straight_training), f"killed at call {count} of {target}"
    assert not list(out.glob(".checkpoint-*")), "a killed checkpoint's staging folder was left"
    expected = load_file(straight_training / "final" / "model.safetensors")
    got = load_file(out / "final" / "model.safetensors")
    assert got.keys() == expected.keys() and all((got[k] == expected[k]).all() for k in got)


def test_segment_killed_leaves_the_earlier_output(files, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    out.write_text("earlier\n")
    assert spawn("segment", files["good"], "-o", out, kill=("os:fsync", 1)).returncode == -9
    assert out.read_text() == "earlier\n"
    out.unlink()
    assert_ok(run(capsys, "segment", files["good"], "-o", out))


# ---- the defects a probe of bad inputs and interruptions found (issue 28) ----


def test_demo_stopped_by_a_signal_checkpoints_exits_143_or_130_and_resumes(
    micro_demo, tmp_path, capsys
):
    assert micro_demo.done.returncode == 0, micro_demo.done.stderr[-3000:]
    expected = json.loads((micro_demo.out / "sweep.json").read_text())["runs"]
    out = tmp_path / "demo"
    args = [*micro_demo.args, "-o", out]
    step = "cd_fast.train.trainer:Trainer._micro_step"  # once a step (no accumulation)
    stopped = spawn(*args, kill=(step, "3:TERM"))  # SIGTERM in the original's third step
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert "signal 15 while training the student on original (checkpoint at step 3)" in line
    assert "--resume" in line and "cannot load model" not in stopped.stderr
    assert (out / "train-original" / "checkpoint-3").is_dir()
    assert not (out / "train-token-surprisal@0.5").exists()  # the demo went no further
    # Ctrl-C in the second student's second step (the original has steps - 3 left to run)
    second = expected["original"]["train_steps"] - 3 + 2
    interrupted = spawn(*args, "--resume", kill=(step, f"{second}:INT"))
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert "signal 2 while training the student on token-surprisal@0.5" in interrupted.stderr
    assert_ok(run(capsys, *args, "--resume"))
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    keys = ("train_steps", "train_label_tokens", "final_loss", "accuracy", "mean_output_tokens")
    assert {n: [r[k] for k in keys] for n, r in runs.items()} == {
        n: [r[k] for k in keys] for n, r in expected.items()
    }
    changed = [a if a != "0.5" else "0.3" for a in args]
    assert_error(run(capsys, *changed, "--resume"), "budgets [0.5] -> [0.3]")


def _sweep_args(micro_demo, out: Path, *extra: str) -> list[object]:
    data = micro_demo.out / "data"
    return [
        *("sweep", data / "original.jsonl", "--eval", data / "eval.jsonl"),
        *("--student", micro_demo.out / "student-init", "-o", out),
        *("--methods", "token", "step", "--budgets", "0.5", "--device", "cpu"),
        *("--epochs", "1", "--tokens-per-step", "4096", "--learning-rate", "3e-3"),
        *("--max-seq-length", "1024", "--max-new-tokens", "48", "--eval-batch-size", "16"),
        *extra,
    ]


CRITERIA = ("--criteria", "token:surprisal", "step:value-flow")


def _stamps(out: Path) -> dict[str, int]:
    """Every file of the finished cells and the scores, with its modification time."""
    files = [*out.glob("cells/*.json"), *out.glob("scores/*"), *out.glob("train-*/row.json")]
    files += list(out.glob("eval-*/predictions.jsonl"))
    return {str(f.relative_to(out)): f.stat().st_mtime_ns for f in files}


def test_a_killed_sweep_resumes_at_the_unfinished_cell_and_grows(micro_demo, tmp_path, capsys):
    assert micro_demo.done.returncode == 0, micro_demo.done.stderr[-3000:]
    straight = tmp_path / "straight"
    assert_ok(run(capsys, *_sweep_args(micro_demo, straight, *CRITERIA)))
    expected = json.loads((straight / "sweep.json").read_text())["runs"]
    assert list(expected) == ["original", "token-surprisal@0.5", "step-value-flow@0.5"]

    out = tmp_path / "killed"
    args = _sweep_args(micro_demo, out, *CRITERIA)
    # SIGKILL as the third cell's training starts: its compressed set is built, two cells done
    killed = spawn(*args, kill=("cd_fast.sweep.run:Sweep.trained", 3))
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("cells/*.json")) == [
        "original.json",
        "token-surprisal@0.5.json",
    ]
    assert (out / "data" / "step-value-flow@0.5.summary.json").is_file()
    assert_error(run(capsys, *args), "pass --resume")
    before = _stamps(out)
    assert_ok(run(capsys, *args, "--resume"))
    after = _stamps(out)
    assert {k: after[k] for k in before} == before, "a finished cell was redone"
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    keys = ("train_steps", "train_label_tokens", "final_loss", "accuracy", "mean_output_tokens")
    assert {n: [r[k] for k in keys] for n, r in runs.items()} == {
        n: [r[k] for k in keys] for n, r in expected.items()
    }

    # --resume with another criterion adds its cell; the others stay as they were
    before = _stamps(out)
    grown = _sweep_args(micro_demo, out, *CRITERIA, "step:role")
    assert_ok(run(capsys, *grown, "--resume"))
    after = _stamps(out)
    assert {k: after[k] for k in before} == before
    results = json.loads((out / "sweep.json").read_text())
    assert list(results["runs"])[-1] == "step-role@0.5"
    assert {(r["a"], r["b"]) for r in results["agreement"]} == {("value-flow", "role")}
    assert 0 <= results["agreement"][0]["jaccard"] <= 1
    report = (out / "report.md").read_text()
    assert "### math" in report and "### general" in report and "Criterion agreement" in report
    assert (out / "agreement.md").is_file() and list(out.glob("report-0-math.png"))
    # a shared setting may not change under --resume
    changed = [a if a != "3e-3" else "1e-3" for a in grown]
    assert_error(run(capsys, *changed, "--resume"), "learning_rate 0.003 -> 0.001")


def test_a_sweep_with_ungraded_eval_records_is_refused_before_training(
    files, student, tmp_path, capsys
):
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"id": "e1", "question": "What is 2 + 2?"}\n')
    out = tmp_path / "sweep"
    args = [*command_args("sweep", files["good"], out, student), "--eval", questions]
    assert_error(run(capsys, *args), "1 evaluation records have no gold answer", "'e1'")
    assert not out.exists()


def test_finished_compress_output_resumed_with_other_settings_is_refused(
    files, student, tmp_path, capsys
):
    out = tmp_path / "c.jsonl"
    args = command_args("compress", files["good"], out, student)
    first = assert_ok(run(capsys, *args))
    finished = out.read_bytes()
    assert assert_ok(run(capsys, *args, "--resume")) == first  # the same run: its summary
    changed = [a if a != "0.5" else "0.8" for a in args]
    assert_error(run(capsys, *changed, "--resume"), "budget 0.5 -> 0.8")
    other = write_jsonl(tmp_path / "other.jsonl", [json.loads(x) for x in files["good"].open()][:5])
    other_args = [other if a == files["good"] else a for a in args]
    assert_error(run(capsys, *other_args, "--resume"), "input", "another file")
    assert out.read_bytes() == finished


def test_score_takes_its_lock_before_it_checks_the_folder_or_loads_a_model(files, tmp_path, capsys):
    out = tmp_path / "s"
    args = command_args("score", files["good"], out, tmp_path / "no-such-model")
    with RunLock(out / ".lock", "s"):  # a first run, still loading its model
        line = assert_error(run(capsys, *args, "--window", "512", "--overlap", "64"))
        assert "being written by another cdfast run" in line and "no such model" not in line
    assert not (out / "manifest.json").exists()


@pytest.fixture(scope="module")
def damaged_student(student, tmp_path_factory) -> Path:
    """The tiny student with its model.safetensors cut in half (a copy interrupted)."""
    copy = tmp_path_factory.mktemp("damaged") / "student"
    shutil.copytree(student, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


@pytest.mark.parametrize("command", ("score", "train", "eval"))
def test_truncated_weights_are_one_line(command, files, damaged_student, tmp_path, capsys):
    out = tmp_path / "out"
    args = command_args(command, files["good"], out, damaged_student)
    assert_error(run(capsys, *args), "weights file is damaged or cut short")
    assert not out.exists()


RECORD = '{"id": "a", "question": "q", "trace": "x y", "gold": "1", "meta": %s}'
BAD_RECORDS = {  # a line of input, and what the error line says
    "lone_surrogate": (RECORD.replace("x y", "x \\ud800 y") % "{}", "field 'trace': holds a lone"),
    "nan": (RECORD.replace('"1"', "NaN") % "{}", "NaN is not JSON"),
    "infinity": (RECORD % '{"x": -Infinity}', "-Infinity is not JSON"),
    "deep": (RECORD % ("[" * 100_000 + "]" * 100_000), "nested too deeply"),
}


@pytest.mark.parametrize("command", ("segment", "compress"))
@pytest.mark.parametrize("bad", sorted(BAD_RECORDS))
def test_records_no_valid_text_or_strict_json_holds_are_one_line(
    command, bad, student, tmp_path, capsys
):
    line, phrase = BAD_RECORDS[bad]
    source = tmp_path / "bad.jsonl"
    source.write_text(line + "\n")
    out = tmp_path / "out.jsonl"
    error = assert_error(run(capsys, *command_args(command, source, out, student)), phrase)
    assert f"{source}:line 1" in error
    assert not out.exists()


def test_nan_written_from_the_api_is_refused():
    from cd_fast.data import Trace, dumps_record

    with pytest.raises(ValueError, match="Out of range float"):
        dumps_record(Trace(id="a", question="q", trace="t", meta={"score": float("nan")}))


def test_all_empty_traces_are_an_error_not_a_ratio_of_zero(records, student, tmp_path, capsys):
    source = write_jsonl(tmp_path / "e.jsonl", [{**r, "trace": " "} for r in records])
    out = tmp_path / "c.jsonl"
    assert_error(
        run(capsys, *command_args("compress", source, out, student)), "every trace is empty"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]


def test_samples_cut_to_the_step_budget_are_counted(files, student, tmp_path, capsys):
    args = [*command_args("train", files["good"], tmp_path / "t", student)]
    args[args.index("--max-tokens-per-step") + 1] = "160"  # below every sample's length
    printed = assert_ok(run(capsys, *args, "--max-steps", "1"))
    cfg = json.loads((tmp_path / "t" / "train_config.json").read_text())
    assert cfg["truncated"] >= 12  # cut to the 160-token step, not to max_seq_length (256)
    assert f"{cfg['samples']} ({cfg['truncated']} truncated, {cfg['dropped']} dropped" in printed


def test_a_tokenizer_without_a_chat_template_is_named(files, student, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(student, plain)
    for name in ("chat_template.jinja", "chat_template.json"):
        (plain / name).unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    result = spawn(*command_args("score", files["good"], tmp_path / "s", plain), "--limit", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "has no chat template" in result.stderr


def test_an_output_file_named_as_a_folder_is_refused(files, student, tmp_path, capsys):
    args = command_args("compress", files["good"], f"{tmp_path / 'newdir'}/", student)
    assert_error(run(capsys, *args), "is a folder: this command writes a file")
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("command", "bad"), (("score", "invalid_json"), ("eval", "no_gold")))
def test_a_failed_start_leaves_no_folder(command, bad, files, student, tmp_path, capsys):
    out = tmp_path / "out"
    assert_error(run(capsys, *command_args(command, files[bad], out, student)))
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "flag", "value", "says"),
    [
        ("compress", "--budget", "1.5", "must be <= 1"),
        ("compress", "--budget", "0", "must be > 0"),
        ("train", "--learning-rate", "0", "must be > 0"),
        ("segment", "--min-chars", "-1", "must be >= 0"),
    ],
)
def test_option_ranges_are_refused_before_any_model_loads(
    command, flag, value, says, files, tmp_path, capsys
):
    args = command_args(command, files["good"], tmp_path / "o", tmp_path / "no-such-model")
    assert_error(run(capsys, *args, flag, value), f"argument {flag}: {says}")


def test_train_progress_lines_keep_their_interval_off_a_terminal(files, student, tmp_path):
    # logging every step must not print a progress line per step into a log file
    args = command_args("train", files["good"], tmp_path / "t", student)
    result = subprocess.run(
        [sys.executable, "-m", "cd_fast.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "CD_FAST_PROGRESS_SECONDS": "600"},
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not [line for line in result.stderr.splitlines() if line.startswith("train:")]
