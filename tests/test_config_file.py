"""`--config FILE` / MGEO_CONFIG: options from a TOML (or YAML) file, below flags and variables.

Keys are the options' environment variables without MGEO_, in lower case. Every mistake in the
file is one line on stderr naming the file, exit 2."""

from __future__ import annotations

import os

import pytest

from mgeo.tools.cli import main, parse


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Only what a test sets: no MGEO_* variable of the shell that runs the suite."""
    for key in [k for k in os.environ if k.startswith("MGEO_")]:
        monkeypatch.delenv(key)


def _file(tmp_path, text: str, name: str = "mgeo.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _fails(capsys, argv) -> str:
    """`mgeo ARGV` must stop with exit 2 and exactly one line on stderr; returns it."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and err.count("\n") == 0, err
    return err


WORKER_TOML = """\
group_id = "from-file"
input_topic = "file-in"
output_topic = "file-out"
max_inflight = 123
positive_labels = ["exact_match", "partial_match"]

[kafka_config]
"security.protocol" = "SASL_SSL"
"sasl.password" = "hunter2,x=y"
"""


def test_flag_beats_variable_beats_file_beats_default(tmp_path, monkeypatch):
    cfg = _file(tmp_path, WORKER_TOML)
    monkeypatch.setenv("MGEO_INPUT_TOPIC", "env-in")
    monkeypatch.setenv("MGEO_OUTPUT_TOPIC", "env-out")
    s = parse("worker", ["--config", str(cfg), "--output-topic", "flag-out"])
    assert s.output_topic == "flag-out"  # flag over variable and file
    assert s.input_topic == "env-in"  # variable over file
    assert s.group_id == "from-file" and s.max_inflight == 123  # file over default
    assert s.positive_labels == ["exact_match", "partial_match"]
    assert s.kafka_config == {"security.protocol": "SASL_SSL", "sasl.password": "hunter2,x=y"}
    assert s.dlq_topic == "address-pairs.dlq"  # the default, where nothing sets it


def test_mgeo_config_names_the_file_and_the_flag_overrides_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MGEO_CONFIG", str(_file(tmp_path, 'group_id = "env-file"\n', "a.toml")))
    assert parse("worker", []).group_id == "env-file"
    other = _file(tmp_path, 'group_id = "flag-file"\n', "b.toml")
    assert parse("worker", ["--config", str(other)]).group_id == "flag-file"


def test_yaml_files_take_the_same_keys(tmp_path):
    pytest.importorskip("yaml")
    cfg = _file(tmp_path, "group_id: from-yaml\nmax_inflight: 7\nkafka_config:\n"
                          "  security.protocol: SSL\n", "mgeo.yaml")
    s = parse("worker", ["--config", str(cfg)])
    assert (s.group_id, s.max_inflight) == ("from-yaml", 7)
    assert s.kafka_config == {"security.protocol": "SSL"}


def test_one_file_serves_every_command(tmp_path):
    """Keys of options another command has are not this command's business (as with the
    variables): one file configures the worker, the producer and the collector."""
    cfg = _file(tmp_path, 'bootstrap_servers = "k1:9092"\n' + WORKER_TOML)
    s = parse("produce", ["--config", str(cfg)])
    assert s.bootstrap_servers == "k1:9092" and s.input_topic == "file-in"


def test_score_takes_in_and_out_from_the_file(tmp_path):
    cfg = _file(tmp_path, 'in = "pairs.csv"\nout = "scores.csv"\n')
    s = parse("score", ["--config", str(cfg)])
    assert (str(s.input), str(s.out)) == ("pairs.csv", "scores.csv")


def test_help_works_whatever_the_file_holds(tmp_path, capsys):
    cfg = _file(tmp_path, "this is not toml")
    with pytest.raises(SystemExit) as exc:
        parse("worker", ["--config", str(cfg), "--help"])
    assert exc.value.code == 0 and "--config" in capsys.readouterr().out


def test_a_missing_file_is_one_line(tmp_path, capsys):
    err = _fails(capsys, ["worker", "--config", str(tmp_path / "nope.toml")])
    assert err.startswith("mgeo worker: ") and "nope.toml" in err and "--config" in err, err


def test_a_missing_file_from_the_variable_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MGEO_CONFIG", str(tmp_path / "nope.toml"))
    err = _fails(capsys, ["worker"])
    assert "MGEO_CONFIG" in err and "nope.toml" in err, err


@pytest.mark.parametrize("key,hint", [("no_such_option", None),
                                      ("bootstrap-servers", "bootstrap_servers"),
                                      ("BOOTSTRAP_SERVERS", "bootstrap_servers"),
                                      ("mgeo_group_id", "group_id")])
def test_an_unknown_key_is_one_line_naming_key_and_file(tmp_path, capsys, key, hint):
    cfg = _file(tmp_path, f'{key} = "x"\n')
    err = _fails(capsys, ["worker", "--config", str(cfg)])
    assert str(cfg) in err and repr(key) in err, err
    if hint:
        assert hint in err.replace(repr(key), ""), err


@pytest.mark.parametrize("text,key", [('max_inflight = "lots"\n', "max_inflight"),
                                      ('device = "gpu"\n', "device"),
                                      ("group_id = 12\n", "group_id"),
                                      ('[kafka_config]\n"sasl.password" = { v = "hunter2" }\n',
                                       "kafka_config")])
def test_a_wrong_value_is_one_line_naming_key_and_file_never_the_value(tmp_path, capsys, text,
                                                                       key):
    cfg = _file(tmp_path, text)
    err = _fails(capsys, ["worker", "--config", str(cfg)])
    assert f"{key} in {cfg}" in err and "hunter2" not in err, err


def test_a_value_the_variable_sets_is_not_blamed_on_the_file(tmp_path, capsys, monkeypatch):
    cfg = _file(tmp_path, "max_inflight = 5\n")
    monkeypatch.setenv("MGEO_MAX_INFLIGHT", "lots")
    err = _fails(capsys, ["worker", "--config", str(cfg)])
    assert "MGEO_MAX_INFLIGHT" in err and str(cfg) not in err, err


@pytest.mark.parametrize("name,text,says", [
    ("bad.toml", "group_id = \n", "not valid TOML"),
    ("bad.toml", "group_id = 'a'\ngroup_id = 'b'\n", "not valid TOML"),
    ("bad.yaml", "group_id: [unclosed\n", "not valid YAML"),
    ("list.yaml", "- group_id\n", "mapping"),
    ("mgeo.ini", "group_id = a\n", ".toml"),
])
def test_a_file_that_cannot_be_read_is_one_line(tmp_path, capsys, name, text, says):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    cfg = _file(tmp_path, text, name)
    err = _fails(capsys, ["worker", "--config", str(cfg)])
    assert str(cfg) in err and says in err, err


def test_a_directory_is_one_line(tmp_path, capsys):
    err = _fails(capsys, ["worker", "--config", str(tmp_path)])
    assert str(tmp_path) in err, err


def test_arguments_come_from_the_file_and_the_variables_too(tmp_path, monkeypatch, capsys):
    cfg = _file(tmp_path, 'src = "modelscope-dir"\n')
    monkeypatch.setenv("MGEO_DST", "hf-dir")
    s = parse("convert", ["--config", str(cfg)])
    assert (str(s.src), str(s.dst)) == ("modelscope-dir", "hf-dir")
    monkeypatch.delenv("MGEO_DST")
    err = _fails(capsys, ["convert", "--config", str(cfg)])
    assert "DST (MGEO_DST) is required" in err, err


def test_yaml_without_pyyaml_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)  # as on a host without PyYAML
    cfg = _file(tmp_path, "group_id: g\n", "mgeo.yml")
    err = _fails(capsys, ["worker", "--config", str(cfg)])
    assert str(cfg) in err and "pip install pyyaml" in err, err


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _file(tmp_path, 'group_id = "from-home"\n')
    assert parse("worker", ["--config", "~/mgeo.toml"]).group_id == "from-home"
