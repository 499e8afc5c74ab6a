"""The seams: a light CLI, user errors in one line, settings declared once, no import cycles."""
import argparse
import ast
import itertools
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard import cli as dashboard_cli
from stream import cli
from stream.config import settings_table
from stream.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stream", "trainer", "dashboard")


def heavy_modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint('HEAVY:' + ','.join(m for m in ('torch', 'transformers', 'streamlit') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "TECAFLOW_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 0, result.stderr
    return [m for m in result.stdout.strip().splitlines()[-1].removeprefix("HEAVY:").split(",") if m]


@pytest.mark.parametrize("code", [
    "from stream.cli import build_parser\ntry:\n    build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass",
    "from stream.cli import main\nmain(['trends'])",  # Redis is away: one line, exit 2, and no torch
    "import stream.app",  # what `tecaflow worker` runs
])
def test_the_cli_and_the_worker_never_import_torch(code):
    assert heavy_modules_after(code) == []


def test_a_dependency_failure_is_one_line_with_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("TECAFLOW_REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")
    assert cli.main(["trends"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Redis at redis://:***@127.0.0.1:1/0" in err and "s3cret" not in err


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(capsys, monkeypatch):
    def fails_with(error):
        def command(args):
            raise error
        return command

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    trends = parser._subparsers._group_actions[0].choices["trends"]
    trends.set_defaults(func=fails_with(UserError("--stream: no such stream")))
    assert cli.main(["trends"]) == 2
    assert capsys.readouterr().err == "tecaflow trends: error: --stream: no such stream\n"
    trends.set_defaults(func=fails_with(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["trends"])
    trends.set_defaults(func=fails_with(ValueError("also a bug")))
    with pytest.raises(ValueError):
        cli.main(["trends"])
    import redis
    trends.set_defaults(func=fails_with(redis.ResponseError("user_script:3: attempt to index a nil value")))
    with pytest.raises(redis.ResponseError):  # Redis answered: our script is wrong, not the user's setup
        cli.main(["trends"])


def test_a_missing_file_the_user_named_is_one_line(capsys):
    assert cli.main(["backtest", "--csv", "/nonexistent/scores.csv"]) == 2
    assert capsys.readouterr().err.startswith("tecaflow backtest: error: /nonexistent/scores.csv:")


@pytest.mark.parametrize("argv, message", [
    (["bench", "pipeline", "--instances", "0"], "--instances: must be > 0, got 0"),
    (["bench", "pipeline", "--segments", "-5"], "--segments: must be > 0, got -5"),
    (["bench", "pipeline", "--repeat", "0"], "--repeat: must be > 0, got 0"),
    (["demo", "--streams", "x"], "--streams: 'x' is not a valid int"),
    (["bench", "detect", "--steady", "0"], "--steady: must be > 0"),
])
def test_counts_on_the_command_line_must_be_positive_before_anything_starts(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_configuration_page_table_is_the_declared_one():
    """The page's table, whole: a row added, dropped or edited on either side fails."""
    page = (ROOT / "docs" / "configuration.md").read_text().splitlines()
    start = page.index(settings_table().splitlines()[0])
    table = "\n".join(itertools.takewhile(lambda line: line.startswith("|"), page[start:]))
    assert table == settings_table(), "docs/configuration.md is stale: paste `tecaflow settings --markdown` over its table"


def python_files():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def stream_modules():
    for path in sorted((ROOT / "stream").rglob("*.py")):
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


# What may reach the trainer (and so torch) from stream/: the benches and the replay, which train,
# export or read datasets; the CLI only registers the trainer's subcommands (trainer/cli.py loads
# torch when one of them runs, never when it registers).
MAY_IMPORT_TRAINER = ("stream.bench", "stream.replay", "stream.cli")


def test_only_the_benches_and_the_replay_import_the_trainer():
    importers = [module for module, path in stream_modules()
                 if not module.startswith(MAY_IMPORT_TRAINER)
                 and any(name.split(".")[0] == "trainer" for name in imports_of(path))]
    assert importers == []


def test_what_the_stream_extra_imports_never_loads_torch():
    light = [module for module, _ in stream_modules() if not module.startswith(("stream.bench", "stream.replay"))]
    assert len(light) > 20 and "stream.app" in light and "stream.alerts.detector" in light
    assert heavy_modules_after("\n".join(f"import {module}" for module in light)) == []


def test_only_the_settings_module_reads_tecaflow_settings_from_the_environment():
    # tritonserver.py hands the whole environment to its child; triton_model.py runs inside
    # Triton, where TECAFN_ORT_THREADS is Triton's setting, not tecaflow's.
    allowed = {"stream/config.py", "stream/stack/tritonserver.py", "stream/triton_model.py"}
    readers = []
    for path in python_files():
        name = str(path.relative_to(ROOT))
        source = path.read_text()
        if name not in allowed and ("os.environ" in source or "os.getenv" in source):
            readers.append(name)
    assert readers == []


def imports_of(path: Path) -> set[str]:
    """Project modules `path` imports, at any level (a function-level import is still an edge)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def test_no_import_cycles_between_project_modules():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in python_files()}
    graph = {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}
    cycles = []

    def visit(module, path):
        for nxt in graph[module]:
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(module)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, [module])
    assert cycles == []


def test_a_missing_optional_package_names_its_extra(capsys, monkeypatch):
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)

    def needs_torch(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    parser._subparsers._group_actions[0].choices["trends"].set_defaults(func=needs_torch)
    assert cli.main(["trends"]) == 2
    assert "pip install 'tecaflow[train]'" in capsys.readouterr().err


@pytest.mark.parametrize("content", [
    pytest.param(b"hello\n", id="text"),
    pytest.param(b"step,epoch,L_task\n10,0,0.5\n", id="losses.csv"),
    # a pickle of more than weights: PyTorch's message advises weights_only=False, which would run it
    pytest.param(pickle.dumps(argparse.Namespace(a=1), protocol=2), id="pickle"),
])
@pytest.mark.parametrize("command, extra", [
    ("evaluate", ["--data", "synthetic", "--synthetic-size", "60"]),
    ("export", ["--repo", "repo"]),
])
def test_a_file_that_is_not_a_checkpoint_is_one_line(command, extra, content, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "losses.csv").write_bytes(content)
    assert cli.main([command, "--checkpoint", "losses.csv", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tecaflow {command}: error: losses.csv: not a tecaflow checkpoint (")
    assert err.count("\n") == 1 and "weights_only" not in err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("setting, message", [
    ("d_model=0", "d_model must be an integer >= 1, got 0"),
    ("dropout=2", "dropout must be in [0, 1), got 2.0"),
    ("conv_kernel=0", "conv_kernel must be an odd integer >= 1"),
    ("conv_kernel=4", "conv_kernel must be an odd integer >= 1"),
    ("tau=0", "tau must be a finite number > 0, got 0.0"),
    ("tau=nan", "tau must be a finite number > 0, got nan"),
    ("gamma2=-1", "gamma2 must be a finite number >= 0"),
])
def test_a_model_option_out_of_range_is_one_line_before_the_data_loads(setting, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", "/no/such/data", "--out", str(out), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tecaflow train: error: --set {setting!r}: {message}")
    assert err.count("\n") == 1 and not out.exists()


def never_exec(*command):
    raise AssertionError(f"the dashboard would have started: {command}")


def test_an_address_that_does_not_resolve_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(dashboard_cli.os, "execv", never_exec)
    assert cli.main(["dashboard", "--address", "999.1.1.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tecaflow dashboard: error: --address 999.1.1.1: cannot resolve it") and err.count("\n") == 1


def test_a_port_in_use_is_one_line_before_the_dashboard_says_its_url(capsys, monkeypatch):
    monkeypatch.setattr(dashboard_cli.os, "execv", never_exec)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["dashboard", "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "tecaflow dashboard on http://..." for a dashboard that never starts
    assert captured.err == (f"tecaflow dashboard: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
                            f"choose another --port\n")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dashboard_cli.check_bindable("127.0.0.1", port)  # free again: no error


def test_accuracy_data_that_does_not_exist_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint either")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "notes.txt"), "--repo", str(tmp_path / "repo"),
                     "--accuracy-data", "/nonexistent"]) == 2
    assert capsys.readouterr().err == "tecaflow export: error: --accuracy-data /nonexistent: no such file or directory\n"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "notes.txt"), "--quantize", "none",
                     "--accuracy-data", "synthetic"]) == 2
    assert "--accuracy-data measures the int8 graph: it needs --quantize int8 or auto" in capsys.readouterr().err


def test_training_flags_are_the_training_options_declared_once():
    from trainer.options import TrainOptions, flagged, options_from
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", "synthetic", "--out", "run"])
    assert options_from(args) == TrainOptions(out=Path("run"))  # every flag's default is the declared one
    args = parser.parse_args(["train", "--data", "synthetic", "--out", "run", "--no-progress", "--freeze-encoder",
                              "--lr-encoder", "2e-5", "--max-frames", "64", "--modality-dropout", "0", "--seeds", "3"])
    chosen = options_from(args)
    assert (chosen.progress, chosen.freeze_encoder, chosen.lr_encoder, chosen.max_frames, chosen.modality_dropout,
            chosen.seeds) == (False, True, 2e-5, 64, 0.0, 3)
    train_flags = {a.dest for a in parser._subparsers._group_actions[0].choices["train"]._actions}
    assert {f.name for f in flagged()} <= train_flags and "ablation" in train_flags
