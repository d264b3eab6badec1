"""Every workflow of modelport: ``nox -s tests`` (the default), ``isolated``, ``lint``, ``types``, ``docs``,
``benchmarks``, ``demo``, ``fuzz``, ``gpu``.

Each session installs with ``-c tests/constraints.txt`` (torch is pinned there: see that
file). Virtualenvs are reused between runs (``--reuse-venv=no`` rebuilds them), and every
session still runs its install step, so a reused venv follows dependency changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox
import nox.virtualenv

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
CONSTRAINTS = "tests/constraints.txt"
#: Every plugin distribution in plugins/, by folder name: a new plugin gets its ``isolated`` session.
PLUGINS = tuple(sorted(path.parent.name for path in ROOT.glob("plugins/*/pyproject.toml")))


def local_plugin_dependencies(plugin: str) -> tuple[str, ...]:
    """The plugins in plugins/ that ``plugin`` requires (``modelport-hf`` in its dependencies gives ``hf``).

    They are not on PyPI yet, so a session that installs one plugin installs these from the
    checkout beside it, recursively.
    """
    import tomllib

    found: list[str] = []
    pending = [plugin]
    while pending:
        project = tomllib.loads((ROOT / "plugins" / pending.pop() / "pyproject.toml").read_text())
        for requirement in project["project"].get("dependencies", []):
            name = requirement.split(";")[0].split("[")[0]
            for sep in "<>=!~ ":
                name = name.split(sep)[0]
            folder = name.strip().removeprefix("modelport-")
            if name.startswith("modelport-") and folder in PLUGINS and folder not in found:
                found.append(folder)
                pending.append(folder)
    return tuple(found)


#: What the test sessions install besides the projects under test.
TEST_REQUIREMENTS = ("pytest>=8", "hypothesis>=6", "sentencepiece", "mkdocs")
#: The plugins the demo needs to load the default model (its Llama is native, in core).
DEMO_PLUGINS = ("hf",)


def pip_install(session: nox.Session, *args: str) -> None:
    """``pip install`` under the constraints, without byte-compiling.

    Byte-compiling every module of torch and transformers at install time costs about
    20 s per venv; Python compiles the modules a run imports on first use instead, and
    caches them in the venv's own ``pycache`` folder, even where ``PYTHONDONTWRITEBYTECODE``
    is set (without a cache, every process would recompile torch and transformers: about
    4 s each). The source tree gets no ``__pycache__`` from nox.
    """
    if isinstance(session.virtualenv, nox.virtualenv.VirtualEnv):
        session.env["PYTHONDONTWRITEBYTECODE"] = None
        session.env["PYTHONPYCACHEPREFIX"] = str(Path(session.virtualenv.location) / "pycache")
    session.install("-c", CONSTRAINTS, "--no-compile", *args)


def install_projects(session: nox.Session, *projects: str, extra: tuple[str, ...] = ()) -> None:
    """Install local projects (editable) and ``extra`` requirements in one resolver run.

    setuptools goes in first so the local builds skip pip's per-project isolated build
    environments, which would cost several seconds each.
    """
    pip_install(session, "setuptools>=69")
    editables = [arg for project in projects for arg in ("-e", project)]
    pip_install(session, "--no-build-isolation", *editables, *extra)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, with core and every plugin installed."""
    install_projects(session, ".", *(f"plugins/{name}" for name in PLUGINS), extra=TEST_REQUIREMENTS)
    session.run("pytest", *session.posargs)


@nox.session
@nox.parametrize("plugin", [nox.param(name, id=name) for name in PLUGINS])
def isolated(session: nox.Session, plugin: str) -> None:
    """Core plus one plugin and the plugins it requires: core's tests and that plugin's tests pass without the rest."""
    needed = (plugin, *local_plugin_dependencies(plugin))
    install_projects(session, ".", *(f"plugins/{name}" for name in needed), extra=TEST_REQUIREMENTS)
    paths = ["tests/core", f"tests/plugins/{plugin}"]
    missing = [path for path in paths if not (ROOT / path).is_dir()]
    if missing:
        session.error(f"no tests for this session at {', '.join(missing)}")
    session.run("pytest", *paths, *session.posargs)


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """modelport-cuda's tests where torch sees a CUDA device, the ``gpu``-marked ones included; not in CI.

    Installs core and every plugin with PyPI's torch of the constraints (its Linux build is the
    CUDA one: PyTorch's CPU index is left out of this session), then skips (status 0) unless
    ``torch.cuda.is_available()``. ``nox -s gpu -- -m gpu`` runs only the tests marked ``gpu``.
    """
    session.env["PIP_EXTRA_INDEX_URL"] = None  # a +cpu torch from PyTorch's CPU index would see no GPU
    install_projects(session, ".", *(f"plugins/{name}" for name in PLUGINS), extra=TEST_REQUIREMENTS)
    found = session.run(
        "python", "-c", "import torch; print(torch.cuda.is_available(), torch.__version__)", silent=True
    )
    if not isinstance(found, str) or not found.startswith("True"):
        session.skip(f"no CUDA device here: torch.cuda.is_available() is False (torch {str(found).split()[-1]})")
    session.run("pytest", "tests/plugins/cuda", "-ra", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff's checks and formatting over the whole repository (code blocks in docs included)."""
    pip_install(session, "ruff")
    session.run("ruff", "check", *session.posargs)
    session.run("ruff", "format", "--check", *session.posargs)


@nox.session
def types(session: nox.Session) -> None:
    """Mypy, strict, on core (configured in pyproject.toml [tool.mypy])."""
    install_projects(session, ".", extra=("mypy", "pytest>=8"))
    session.run("mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site; any warning (a broken link, a page missing from nav) fails."""
    config = ROOT / "docs" / "mkdocs.yml"
    if not config.is_file():
        session.skip(f"{config.relative_to(ROOT)} does not exist yet")
    requirements = ROOT / "docs" / "requirements.txt"
    pip_install(session, "mkdocs", *(("-r", str(requirements)) if requirements.is_file() else ()))
    session.run("mkdocs", "build", "--strict", "-f", str(config.relative_to(ROOT)), *session.posargs)


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py (or those named: ``nox -s benchmarks -- load tokenizer``).

    Each prints its figures and their ratios against the anchors it measures in the same run.
    """
    install_projects(session, ".", "plugins/hf", "plugins/transformers")
    names = session.posargs or sorted(p.stem.removeprefix("bench_") for p in ROOT.glob("benchmarks/bench_*.py"))
    for name in names:
        session.run("python", f"benchmarks/bench_{name}.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The embedded default model: ``modelport inspect default``, then ``modelport generate default``.

    Installs core and modelport-hf from wheels, not editable, so this also proves the
    default model (a small Llama trained on Shakespeare, served by core's native
    implementation) ships in the package. Nothing is downloaded. The venv's
    ``modelport`` command stays for the user to run (the session prints its path).
    """
    pip_install(session, ".", *(f"plugins/{name}" for name in DEMO_PLUGINS))
    # "default" names the model inside the installed package, from any folder (modelport.DEFAULT_MODEL).
    session.run("modelport", "inspect", "default")
    prompt, *flags = session.posargs or ["ROMEO:\n"]
    session.run("modelport", "generate", "default", prompt, "--max-tokens", "80", "--seed", "0", *flags)
    if isinstance(session.virtualenv, nox.virtualenv.VirtualEnv):
        bin_dir = Path(session.bin).relative_to(ROOT) if Path(session.bin).is_relative_to(ROOT) else session.bin
        session.log(
            f"The demo's venv keeps the modelport command: {bin_dir}/modelport generate default 'JULIET:' "
            f"(or `. {bin_dir}/activate`, then modelport ...)"
        )


@nox.session(default=False)
def fuzz(session: nox.Session) -> None:
    """The fuzz tests of the untrusted readers, long: ``MODELPORT_FUZZ_EXAMPLES`` examples per reader (default 1000).

    The same tests run in ``tests`` with a few examples each; here every reader (config.json,
    the safetensors header, the shard index, tokenizer_config.json and its chat template) gets
    many more. ``nox -s fuzz -- -x`` passes arguments to pytest.
    """
    install_projects(session, ".", "plugins/hf", extra=TEST_REQUIREMENTS)
    session.env.setdefault("MODELPORT_FUZZ_EXAMPLES", os.environ.get("MODELPORT_FUZZ_EXAMPLES", "1000"))
    session.run(
        "pytest", "tests/plugins/hf/test_fuzz_loaders.py", "tests/plugins/hf/test_fuzz_parsers.py", *session.posargs
    )


@nox.session(name="vllm-parity", default=False)
def vllm_parity(session: nox.Session) -> None:
    """modelport against vLLM 0.32 live on every config of ../shared/corpus/configs: the agreement table.

    Not in the default sessions nor in CI. A venv of its own holds core, modelport-hf and
    modelport-transformers, ``vllm==0.32.0`` installed ``--no-deps`` beside the CPU torch
    of the constraints, then the part of vLLM's requirements a CPU machine can install
    (``python tests/vllm_parity.py --requirements``; vLLM 0.32 asks for transformers
    >=5.16.1,<5.20). Arguments go to tests/vllm_parity.py: ``-- --write DIR`` writes vLLM's
    answers in the shape of the corpus expectations, to refresh them for the next vLLM.
    vLLM's multimodal model modules import torchvision, whose CPU build comes only from
    PyTorch's own index (the PyPI build needs CUDA torch): where that index is out of reach,
    vLLM fails to inspect those architectures and the table shows it.
    """
    install_projects(session, ".", "plugins/hf", "plugins/transformers", extra=("packaging",))
    pip_install(session, "--no-deps", "vllm==0.32.0")
    listed = session.run("python", "tests/vllm_parity.py", "--requirements", silent=True)
    assert isinstance(listed, str)
    pip_install(session, *listed.split())
    session.run("python", "tests/vllm_parity.py", *session.posargs)
