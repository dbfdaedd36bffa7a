"""The model environments of infra validation: built once per set of requirements, anywhere."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from registry import infra
from registry.infra import _tail, model_environment, requirements_key


def test_an_environment_is_built_once_and_found_by_its_requirements(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative state directory, as the default ./.retrain is
    Path("requirements.txt").write_text("")  # nothing to install: the venv alone
    deadline = time.monotonic() + 300

    env = model_environment(Path("requirements.txt"), Path("state/model-envs"), deadline)
    marker = (env / ".ready").stat().st_mtime_ns
    again = model_environment(Path("requirements.txt"), Path("state/model-envs"), deadline)

    assert env.is_absolute() and (env / "bin" / "python").exists()
    assert env.name == requirements_key("")
    assert again == env and (env / ".ready").stat().st_mtime_ns == marker


def test_an_interrupted_build_is_redone(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    half = tmp_path / "envs" / requirements_key("")
    half.mkdir(parents=True)
    (half / "leftover").write_text("a build cut off halfway")

    env = model_environment(requirements, tmp_path / "envs", time.monotonic() + 300)

    assert env == half and (env / ".ready").exists() and not (env / "leftover").exists()


def test_the_key_ignores_the_order_of_the_requirements():
    assert requirements_key("a==1\nb==2\n") == requirements_key("b==2\na==1")
    assert requirements_key("a==1") != requirements_key("a==2")


def test_a_failed_command_is_told_by_its_error_lines_cause_first():
    log = "Traceback\n  File x\nModuleNotFoundError: No module named 'lightgbm'\nExit: 1\n"
    assert _tail(log) == "ModuleNotFoundError: No module named 'lightgbm'"
    assert _tail("starting\nstill starting\n") == "starting | still starting"


def test_the_key_names_the_interpreter_so_one_cache_serves_every_python(monkeypatch):
    here = requirements_key("a==1")
    monkeypatch.setattr(sys, "executable", "/opt/other/bin/python3")

    assert requirements_key("a==1") != here


def test_two_builds_of_one_environment_at_once_build_it_once(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("a==1")
    commands: list[list[str]] = []

    def slow_build(command, deadline, what):  # a venv and pip that take a while
        commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            (Path(command[3]) / "bin").mkdir(parents=True)
        time.sleep(0.2)

    monkeypatch.setattr(infra, "_run", slow_build)
    envs: list[Path] = []
    builds = [
        threading.Thread(
            target=lambda: envs.append(
                model_environment(requirements, tmp_path / "envs", time.monotonic() + 60)
            )
        )
        for _ in range(2)
    ]
    for build in builds:
        build.start()
    for build in builds:
        build.join()

    assert len(envs) == 2 and envs[0] == envs[1]
    assert len(commands) == 2  # one venv, one pip install: the second build waited, found it
    assert (envs[0] / ".ready").exists()
