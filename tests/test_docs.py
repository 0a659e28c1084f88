"""Every fenced snippet of README.md and docs/*.md, run or checked as its info string says.

The convention is written at the top of docs/testing.md: `bash`/`sh` and `python` blocks run
(blocks of one page in order, in one folder that links the repository's top-level entries);
`bash check` blocks need what CI has not and are checked instead (bash -n, every `mgeo` line
through the CLI's own argument parser, every `helm install`/`template` of the repository's
chart rendered by Helm's engine); `json`, `toml`, `yaml`, `properties` blocks are parsed;
`console` and `text` blocks are shown output. In every block, a path that starts with a
top-level entry of the repository must exist, and every relative link of a page must resolve.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"bash", "sh", "python"}
PARSED = {"json", "toml", "yaml", "properties"}
SHOWN = {"console", "text", "mermaid"}  # output shown, diagrams
SHELLS = {"bash", "sh"}
# A runnable block that names this address runs against an embedded broker, started for its
# page, with the default topics and a few results on the results topic.
KAFKA = "kafka:9092"
DEFAULT_TOPICS = {"address-pairs": 4, "address-scores": 4, "address-pairs.dlq": 1}
BLOCK_TIMEOUT = 240


@dataclass
class Block:
    page: Path
    line: int           # of the opening fence, 1-based
    lang: str
    words: set[str]     # the info string's other words: slow, check
    text: str
    file: str | None = None  # file=NAME: the block is also written to NAME

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUN and "check" not in self.words and not self.is_first_commands

    @property
    def checked(self) -> bool:
        return self.lang in SHELLS and ("check" in self.words or self.is_first_commands)

    @property
    def is_first_commands(self) -> bool:
        """The README's two commands: installing and `.ci/run` are not run here (their runs are
        tests/test_first_commands.py and the demo's tests); they are checked like `check`."""
        return self.page.name == "README.md" and self.line == 3

    @property
    def needs_broker(self) -> bool:
        return self.runs and (KAFKA in self.text or "mgeo broker" in self.text)


_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^`]*)$")


def blocks(page: Path) -> list[Block]:
    found, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        info = m["info"].split()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence)
                                      and not lines[j].strip().strip(fence[0])):
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
            j += 1
        words = {w for w in info[1:] if "=" not in w}
        files = [w.split("=", 1)[1] for w in info[1:] if w.startswith("file=")]
        found.append(Block(page, i + 1, info[0] if info else "", words,
                           "\n".join(body) + "\n", files[0] if files else None))
        i = j + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def _ids(items):
    return [b.where for b in items]


def test_the_pages_hold_snippets_of_every_kind():
    """The parser finds what the pages hold (a parser that found nothing would pass all)."""
    langs = {b.lang for b in ALL}
    assert {"bash", "python", "console", "json", "toml"} <= langs, langs
    assert any(b.checked and not b.is_first_commands for b in ALL)
    assert any(b.needs_broker for b in ALL)


@pytest.mark.parametrize("block", ALL, ids=_ids(ALL))
def test_every_block_says_what_it_is(block):
    assert block.lang in RUN | PARSED | SHOWN, \
        f"{block.where}: info string {block.lang!r}; use one of {sorted(RUN | PARSED | SHOWN)}"
    assert block.words <= {"slow", "check"}, f"{block.where}: unknown words {block.words}"
    assert "check" not in block.words or block.lang in SHELLS, \
        f"{block.where}: only shell blocks are checked instead of run"


# ---- paths and links -----------------------------------------------------------------------

_TOP = {p.name for p in ROOT.iterdir()} - {".git"}
_PATH = re.compile(r"(?<![\w./:@-])(?:\./)?([\w.-]+(?:/[\w.-]+)*/?)")


def named_paths(text: str) -> set[str]:
    """Repository paths a snippet names: words whose first part is a top-level entry."""
    out = set()
    for m in _PATH.finditer(text):
        path = m.group(1).rstrip("/.")
        if path.split("/")[0] in _TOP and ("/" in path or (ROOT / path).is_file()):
            out.add(path)
    return out


@pytest.mark.parametrize("block", [b for b in ALL if b.lang not in SHOWN],
                         ids=_ids([b for b in ALL if b.lang not in SHOWN]))
def test_paths_a_block_names_exist(block):
    missing = sorted(p for p in named_paths(block.text) if not (ROOT / p).exists())
    assert not missing, f"{block.where} names {missing}, which the repository lacks"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
    bad = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and dest.parent in (ROOT, ROOT / "docs") \
                and anchor not in anchors(dest):
            bad.append(target)
    assert not bad, f"{page.name}: links that lead nowhere: {bad}"


def test_the_link_checker_sees_a_broken_anchor(tmp_path):
    assert _slug("The embedded broker's own faults (Tansu 0.6)") == \
        "the-embedded-brokers-own-faults-tansu-06"
    assert "mgeoworkersabsent" in anchors(ROOT / "docs" / "operations.md")
    assert "no-such-section" not in anchors(ROOT / "docs" / "operations.md")


# Flags of other tools that the pages name in prose (pip, docker, helm, kubectl, Kafka's
# scripts, training/build-default-model); any other `--flag` in prose must be an mgeo flag.
OTHER_TOOLS_FLAGS = {"--no-deps", "--extra-index-url", "--set", "--scale", "--target",
                     "--build-context", "--build-arg", "--api-versions", "--bootstrap-server",
                     "--describe", "--group", "--members", "--pid", "--previous", "--sample",
                     "--profile", "--cpu"}


def mgeo_flags() -> set[str]:
    from mgeo.tools.cli import COMMANDS, _source, settings_class

    return {flag for command in COMMANDS
            for action in _source(command, settings_class(command)).root_parser._actions
            for flag in action.option_strings}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_options_named_in_prose_exist(page):
    """An option renamed or dropped in the code cannot live on in the manual."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    named = {flag for span in re.findall(r"`([^`]+)`", text)
             for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span)}
    unknown = sorted(named - mgeo_flags() - OTHER_TOOLS_FLAGS)
    assert not unknown, f"{page.name} names options no mgeo command has: {unknown}"


def _published_metrics() -> set[str]:
    """The metric names the worker's code declares (counters without their `_total`)."""
    return {name for path in (ROOT / "worker").rglob("*.py")
            for name in re.findall(r'"(mgeo_[a-z_]+)"', path.read_text(encoding="utf-8"))}


def test_the_metrics_table_is_what_the_worker_publishes():
    """docs/metrics.md lists every metric the worker publishes, and no other."""
    rows = [ln for ln in (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8").splitlines()
            if ln.startswith("| `mgeo_")]
    documented = {n for row in rows for n in re.findall(r"`(mgeo_[a-z_]+)", row.split("|")[1])}
    published = _published_metrics()
    assert published, "no metric names found under worker/"
    unknown = {d for d in documented
               if d not in published and d.removesuffix("_total") not in published}
    missing = {p for p in published if p not in documented and f"{p}_total" not in documented}
    assert not unknown, f"docs/metrics.md lists metrics the worker does not publish: {unknown}"
    assert not missing, f"docs/metrics.md does not list: {missing}"


def test_the_alerts_table_is_the_rule_file():
    import yaml

    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| \[`(Mgeo\w+)`\]", text, re.M))
    assert alerts and listed == alerts, (listed ^ alerts)


# ---- blocks that are parsed ----------------------------------------------------------------

@pytest.mark.parametrize("block", [b for b in ALL if b.lang in PARSED],
                         ids=_ids([b for b in ALL if b.lang in PARSED]))
def test_data_blocks_parse(block, tmp_path):
    if block.lang == "json":
        json.loads(block.text)
    elif block.lang == "toml":
        import tomllib

        tomllib.loads(block.text)
    elif block.lang == "yaml":
        import yaml

        assert yaml.safe_load(block.text) is not None
    else:
        from mgeo.settings import read_properties

        (tmp_path / "x.properties").write_text(block.text, encoding="utf-8")
        assert read_properties(tmp_path / "x.properties")


# ---- blocks that are checked, not run ------------------------------------------------------

def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script: continuations joined, split at ; && || | &,
    comments and leading VAR=value assignments dropped."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = list(lexer)
        except ValueError:
            continue  # a heredoc's body
        cmd: list[str] = []
        for tok in tokens + [";"]:
            if tok and set(tok) <= set(";&|"):
                while cmd and re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]):
                    cmd.pop(0)
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
    return out


def check_mgeo(argv: list[str]) -> None:
    """`mgeo COMMAND ...` read as the command reads it (flags, then validation of every value),
    without running it."""
    from mgeo.tools.cli import COMMANDS, parse

    assert argv and argv[0] in COMMANDS, f"mgeo has no command {argv[:1]}"
    parse(argv[0], argv[1:])


def _set(values: dict, dotted: str, raw: str) -> None:
    import yaml

    *parents, last = dotted.split(".")
    for key in parents:
        values = values.setdefault(key, {})
    values[last] = yaml.safe_load(raw)


def check_helm(argv: list[str]) -> bool:
    """`helm install|template|upgrade NAME ./helm/CHART --set k=v ...` rendered by Helm's engine
    with those values (and every CRD API, as a cluster with KEDA and the Prometheus operator
    serves); False when the chart is not in this repository (nothing to render)."""
    from test_helm import FULL_CLUSTER, render_raw

    import helm_python as helm

    if not argv or argv[0] not in ("install", "template", "upgrade"):
        return False
    rest, values, positional = argv[1:], {}, []
    while rest:
        tok = rest.pop(0)
        if tok == "--set":
            key, _, raw = rest.pop(0).partition("=")
            _set(values, key, raw)
        elif tok in ("-n", "--namespace", "-f", "--values", "--version"):
            rest.pop(0)
        elif not tok.startswith("-"):
            positional.append(tok)
    chart = next((p for p in positional if (ROOT / p).is_dir()), None)
    if chart is None:
        return False
    with helm.Chart.load(ROOT / chart) as loaded:
        assert render_raw(loaded, values, FULL_CLUSTER)
    return True


CHECKED = [b for b in ALL if b.checked]


@pytest.mark.parametrize("block", CHECKED, ids=_ids(CHECKED))
def test_blocks_that_cannot_run_here_are_checked(block):
    syntax = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert syntax.returncode == 0, f"{block.where}: {syntax.stderr}"
    for argv in commands(block.text):
        try:
            if argv[0] == "mgeo":
                check_mgeo(argv[1:])
            elif argv[0] == "helm":
                check_helm(argv[1:])
        except BaseException as exc:  # argparse's errors, and SystemExit
            pytest.fail(f"{block.where}: {shlex.join(argv)}: {type(exc).__name__}: {exc}")


def test_the_checks_catch_mistakes():
    assert commands("A=1 mgeo worker --x 1 && helm install a ./helm/mgeo-worker # c\n") == [
        ["mgeo", "worker", "--x", "1"], ["helm", "install", "a", "./helm/mgeo-worker"]]
    with pytest.raises(BaseException):
        check_mgeo(["worker", "--no-such-option", "1"])
    with pytest.raises(BaseException):
        check_mgeo(["topics", "remove"])
    check_mgeo(["topics", "create", "--partitions", "24"])
    assert check_helm(["install", "s", "./helm/mgeo-worker", "--set", "kafka.partitions=24"])
    with pytest.raises(BaseException):  # the chart refuses more replicas than partitions
        check_helm(["install", "s", "./helm/mgeo-worker", "--set", "kafka.partitions=2",
                    "--set", "autoscaling.maxReplicas=24"])
    assert not check_helm(["install", "keda", "kedacore/keda"])
    assert named_paths("helm install s ./helm/mgeo-worker -f deploy/nope.yml /tmp/x") == {
        "helm/mgeo-worker", "deploy/nope.yml"}


# ---- blocks that run -----------------------------------------------------------------------

@dataclass
class Page:
    path: Path
    items: list[Block] = field(default_factory=list)

    @property
    def slow(self) -> bool:
        return any("slow" in b.words or b.needs_broker for b in self.items)


RUNNABLE = [Page(p, [b for b in blocks(p) if b.runs or b.file]) for p in PAGES]
RUNNABLE = [p for p in RUNNABLE if any(b.runs for b in p.items)]


def _workdir(tmp_path: Path) -> Path:
    """A folder where the repository's paths resolve and what a snippet writes stays."""
    for name in _TOP:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def _seeded_broker(stack):
    """An embedded broker with the default topics and three results on address-scores."""
    from confluent_kafka import Producer

    from mgeo import wire
    from mgeo.kafka import create_topics
    from mgeo.tools.broker import EmbeddedBroker

    broker = stack.enter_context(EmbeddedBroker())
    conf = {"bootstrap.servers": broker.bootstrap}
    create_topics(conf, DEFAULT_TOPICS)
    producer = Producer(conf)
    probs = {"not_match": 0.1, "partial_match": 0.2, "exact_match": 0.7}
    for i in range(3):
        producer.produce("address-scores", key=f"r{i}",
                         value=wire.encode_result(f"r{i}", probs, ["exact_match"], "m", False))
    assert producer.flush(30) == 0
    return broker


def _run(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    text = block.text.replace(KAFKA, env["MGEO_BOOTSTRAP_SERVERS"]) if KAFKA in block.text \
        else block.text
    if block.lang == "python":
        script = cwd / f"snippet-{uuid.uuid4().hex[:8]}.py"
        script.write_text(text, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-e", "-c", text]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{block.where}: still running after {BLOCK_TIMEOUT} s:\n{out[-3000:]}")
    finally:  # what the snippet left in the background (a broker, a worker)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


@pytest.mark.parametrize("page", [pytest.param(p, marks=[pytest.mark.slow] if p.slow else [],
                                               id=p.path.name) for p in RUNNABLE])
def test_the_snippets_of_a_page_run_in_order(page, tmp_path):
    from contextlib import ExitStack

    from mgeo.tools.broker import free_port

    cwd = _workdir(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MGEO_")}  # a reader's
    base.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                PYTHONUNBUFFERED="1")
    with ExitStack() as stack:
        broker = _seeded_broker(stack) if any(KAFKA in b.text for b in page.items
                                              if b.runs) else None
        for block in page.items:
            if block.file:
                (cwd / block.file).write_text(block.text, encoding="utf-8")
            if not block.runs:
                continue
            env = dict(base)
            if "mgeo broker" in block.text:  # the block starts its own, on a free port
                port = free_port()
                env.update(MGEO_PORT=str(port), MGEO_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}")
            elif broker is not None and KAFKA in block.text:
                env["MGEO_BOOTSTRAP_SERVERS"] = broker.bootstrap
            done = _run(block, cwd, env)
            assert done.returncode == 0, f"{block.where} failed:\n{done.stdout[-4000:]}"
