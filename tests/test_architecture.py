"""The one-home rules, checked on the source: the trace format, configs that drive the CLI,
the runtime helpers, and imports that never reach into another package's private names."""

import argparse
import ast
import dataclasses
import logging
from pathlib import Path

import pytest

from cd_fast.compress import CompressConfig
from cd_fast.config import add_config_arguments, config_from_args, option
from cd_fast.data import ReadConfig, Trace
from cd_fast.eval import EvalConfig
from cd_fast.formats import (
    DEFAULT_TARGET_TEMPLATE,
    check_target_template,
    final_answer,
    render_target,
    split_completion,
    target_prefix,
    target_suffix,
)
from cd_fast.runtime import batched, choose_device, take, token_batches, warn_once
from cd_fast.score import ScoreConfig
from cd_fast.segment import SegmentConfig
from cd_fast.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (TrainConfig, CompressConfig, ScoreConfig, EvalConfig, SegmentConfig, ReadConfig)


# ---- the trace format ----


def test_target_template_splits_around_the_trace():
    template = DEFAULT_TARGET_TEMPLATE
    target = render_target(template, "x = 1", "42")
    assert target == target_prefix(template) + "x = 1" + target_suffix(template, "42")
    assert target_prefix(template) == "<think>\n"
    custom = "Reasoning: {trace}\nSo: {{ {answer} }}"
    assert target_prefix(custom) == "Reasoning: "
    assert target_suffix(custom, "7") == "\nSo: { 7 }"
    assert target_suffix("<r>{trace}</r>", "7") == "</r>7"  # no {answer}: appended


@pytest.mark.parametrize(
    "template",
    ["no trace here", "{trace}{trace}", "{answer} then {trace}", "{trace} {question}"],
    ids=["missing", "twice", "answer-first", "unknown-field"],
)
def test_bad_target_templates_are_refused(template):
    with pytest.raises(ValueError, match="target_template"):
        check_target_template(template)
    with pytest.raises(ValueError, match="target_template"):
        TrainConfig(output_dir="x", target_template=template)


def test_final_answer_rule_is_gold_then_response_then_trace():
    trace = Trace(id="a", question="q", trace="so 12 apples", answer="It is \\boxed{13}.")
    assert final_answer(trace.gold, trace.answer, trace.trace) == "13"
    assert final_answer("14", None, "so 12") == "14"
    assert final_answer(None, None, "so 12 apples") == "12"
    assert split_completion("<think>a</think> b") == ("a", "b")


def test_scorer_conditions_on_the_trainers_target_format(smollm2):
    from cd_fast.formats import chat_prompt
    from cd_fast.score import Scorer

    model, tokenizer = smollm2
    custom = "Let me reason.\n{trace}\nAnswer: {answer}"
    scorer = Scorer(model, tokenizer, target_template=custom)
    expected = tokenizer(chat_prompt(tokenizer, "Q?") + "Let me reason.\n")["input_ids"]
    assert scorer.prompt_ids("Q?") == expected
    assert Scorer(model, tokenizer).prompt_ids("Q?") != expected


# ---- configs drive the CLI ----


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_documents_itself(config):
    for spec in dataclasses.fields(config):
        assert spec.metadata.get("help"), f"{config.__name__}.{spec.name} has no help"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_flags_map_onto_fields_and_defaults_live_in_the_dataclass(config):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, config, required=())
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    cli_fields = {f.name for f in dataclasses.fields(config) if f.metadata["cli"]}
    assert flags == cli_fields
    required = {
        "TrainConfig": {"output_dir": "o"},
        "CompressConfig": {"method": "token"},
        "EvalConfig": {"model": "m"},
    }.get(config.__name__, {})
    built = config_from_args(config, parser.parse_args([]), **required)
    assert built == config(**required)


def test_flags_parse_into_a_validated_config():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    flags = "-o run --lora-r 8 --no-master-weights --lora-target-modules q_proj k_proj"
    args = parser.parse_args([*flags.split(), "--optim", "adamw_8bit"])
    config = config_from_args(TrainConfig, args, seed=7)
    assert (config.lora_r, config.master_weights, config.optim) == (8, False, "adamw_8bit")
    assert config.lora_target_modules == ["q_proj", "k_proj"]
    assert config.seed == 7  # an override wins over the flags
    with pytest.raises(SystemExit):
        parser.parse_args(["-o", "run", "--optim", "sgd"])  # choices come from the metadata
    with pytest.raises(SystemExit):  # option(minimum=1): refused when parsed
        parser.parse_args(["-o", "r", "--max-tokens-per-step", "0"])
    with pytest.raises(ValueError, match="max_tokens_per_step must be >= 1, got 0"):
        TrainConfig(output_dir="r", max_tokens_per_step=0)  # and by the config itself


def test_option_metadata_groups_and_file_lists(tmp_path):
    @dataclasses.dataclass
    class Demo:
        words: tuple[str, ...] = option(("a",), help="words", parse=lambda p: ("x", "y"))
        size: int = option(3, help="size", group="sizes")

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Demo, title="demo")
    assert [g.title for g in parser._action_groups][-2:] == ["demo", "sizes"]
    assert config_from_args(Demo, parser.parse_args([])) == Demo()
    assert config_from_args(Demo, parser.parse_args(["--words", "f"])).words == ("x", "y")


def test_score_and_eval_configs_validate_themselves():
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        ScoreConfig(shard_size=0)
    with pytest.raises(ValueError, match="max_tokens_per_batch must be >= 1"):
        ScoreConfig(max_tokens_per_batch=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        EvalConfig(model="m", batch_size=0)


def test_cli_rejects_a_zero_limit(cdfast, tmp_path):
    done = cdfast("score", tmp_path / "x.jsonl", "-o", tmp_path / "y", "--model", "m", "--limit", 0)
    assert done.returncode == 2 and "must be >= 1" in done.stderr


# ---- runtime helpers ----


def test_batching_helpers():
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batched(["ab", "c", "de", "f"], 10, cost=len, max_cost=3)) == [
        ["ab", "c"],
        ["de", "f"],
    ]
    assert [list(r) for r in token_batches([3, 4, 10, 1, 1], 8)] == [[0, 1], [2], [3, 4]]
    source = iter(range(10))
    assert list(take(source, 3)) == [0, 1, 2] and next(source) == 3  # reads no further
    assert list(take(range(3), None)) == [0, 1, 2]
    assert choose_device("cpu").type == "cpu"


def test_warn_once_logs_a_message_once(caplog):
    logger = logging.getLogger("cd_fast.test_warn_once")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            warn_once(logger, "slow path on %s", "cpu")
    assert [r.getMessage() for r in caplog.records] == ["slow path on cpu"]


# ---- layering ----


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from X import name` and `import X` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


def _package(module: str) -> str:
    """The package a cd_fast module belongs to: cd_fast.X for a subpackage X, else cd_fast."""
    parts = module.split(".")
    sub = parts[1] if len(parts) > 1 else ""
    is_package = sub in ("kernels", "bench") or (REPO / "cd_fast" / sub).is_dir()
    return f"cd_fast.{sub}" if sub and is_package else "cd_fast"


def test_no_module_imports_another_packages_private_names():
    offenders = []
    sources = [*REPO.glob("cd_fast/**/*.py"), *REPO.glob("kernels/*.py"), *REPO.glob("bench/*.py")]
    for path in sources:
        parts = path.relative_to(REPO).with_suffix("").parts
        installed = ("cd_fast", *parts) if parts[0] in ("kernels", "bench") else parts
        own = _package(".".join(installed))
        for module, name in _imports(path):
            private = any(
                part.startswith("_") and not part.endswith("__")
                for part in [name, *module.split(".")]
            )
            if module.startswith("cd_fast") and private and _package(module) != own:
                offenders.append(f"{path.relative_to(REPO)}: from {module} import {name}")
    assert not offenders, offenders


def test_models_does_not_import_training():
    modules = {module for module, _ in _imports(REPO / "cd_fast" / "models.py")}
    assert not any(m.startswith("cd_fast.train") for m in modules), modules


# ---- the import graph: no cycles, no import from a higher layer ----

EXTENSIONS = {"cd_fast._C"}  # compiled (csrc/)
# lowest first; a module belongs to the layer of its longest listed prefix
LAYERS = (
    ("cd_fast._version", "cd_fast.native", "cd_fast.runtime", "cd_fast.config", "cd_fast.formats"),
    ("cd_fast.data", "cd_fast.runs"),
    (
        "cd_fast",
        "cd_fast.segment",
        "cd_fast.kernels",
        "cd_fast.patches",
        "cd_fast.models",
        "cd_fast.generate",
    ),
    ("cd_fast.score",),
    ("cd_fast.compress",),
    ("cd_fast.train",),
    ("cd_fast.eval", "cd_fast.teacher"),
    ("cd_fast.sweep",),
    ("cd_fast.demo",),
    ("cd_fast.bench",),
    ("cd_fast.cli",),
)


def _module_files() -> dict[str, Path]:
    """Every module of the installed package, by name (kernels/ and bench/ as installed)."""
    found = {}
    for path in REPO.glob("cd_fast/**/*.py"):
        found[".".join(path.relative_to(REPO).with_suffix("").parts)] = path
    for folder in ("kernels", "bench"):
        for path in (REPO / folder).glob("*.py"):
            found[f"cd_fast.{folder}.{path.stem}"] = path
    return {name.removesuffix(".__init__"): path for name, path in found.items()}


def _runtime_imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The cd_fast modules `module` imports when it runs (inside functions too; not the
    `if TYPE_CHECKING:` ones), relative imports resolved. `from package import submodule`
    depends on the submodule (the package has run by then)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            inner = {f"{base}.{alias.name}" for alias in node.names}
            submodules = inner & (modules | EXTENSIONS)
            names |= submodules if submodules == inner else {base, *submodules}
    return {n for n in names if n in modules}


def _layer(module: str) -> int:
    matches = [
        (len(prefix), i)
        for i, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(prefix + ".")
    ]
    best = max(matches, default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def import_graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {
        name: _runtime_imports(path, name, set(modules)) - {name} for name, path in modules.items()
    }


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, upward


def test_modules_stay_short_and_the_trainer_keeps_only_the_loop():
    long = {
        str(path.relative_to(REPO)): n
        for path in REPO.glob("cd_fast/**/*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert not long, long
    tree = ast.parse((REPO / "cd_fast" / "train" / "trainer.py").read_text(encoding="utf-8"))
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    assert trainer.end_lineno - trainer.lineno + 1 < 400
