"""CLI test helpers: invoke `edgepack` in-process and check the one-line error contract."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli.main import main


@pytest.fixture(scope="session")
def console() -> str:
    """Path of the installed `edgepack` console script (next to this interpreter, else on PATH)."""
    candidate = Path(sys.executable).with_name("edgepack")
    found = str(candidate) if candidate.is_file() else shutil.which("edgepack")
    if found is None:
        pytest.skip("the edgepack console script is not installed")
    return found


def leftovers(bundle: Path) -> list[Path]:
    """The bundle directory and any staging directories next to it, if they exist."""
    found = [bundle] if bundle.exists() else []
    if bundle.parent.is_dir():
        found += sorted(bundle.parent.glob(f".{bundle.name}.staging-*"))
    return found


@pytest.fixture(scope="session")
def shared_recipe(trained_example):
    """Writes the base recipe for the trained example with a given output; usable from wider scopes."""
    # tests/conftest.py is loaded by path: both conftests are named `conftest`, so importing it by name is ambiguous.
    spec = importlib.util.spec_from_file_location("_edgepack_tests_conftest", Path(__file__).parents[1] / "conftest.py")
    root = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root)

    def write(output: Path, name: str) -> Path:
        return root.write_recipe(trained_example, root.base_recipe(trained_example, output), name=name)

    return write


@pytest.fixture
def invoke():
    """Run `edgepack ARGS...` in-process with CliRunner; paths are turned into strings."""
    runner = CliRunner()

    def run(*args, **kwargs):
        return runner.invoke(main, [str(arg) for arg in args], **kwargs)

    return run


@pytest.fixture
def expect_error():
    """Assert a clean failure: exit code, exactly one final `error:` line with the fragments, no traceback,
    nothing on stdout and (when `bundle` is given) no bundle or staging directory left behind."""

    def check(result, *fragments: str, bundle: Path | None = None, code: int = 1) -> str:
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output
        assert "internal error" not in result.output
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert lines[-1] == errors[0], result.stderr
        line = errors[0]
        for fragment in fragments:
            assert fragment in line, f"{fragment!r} not in {line!r}"
        if bundle is not None:
            assert leftovers(bundle) == []
        return line

    return check


def _pack_once(shared_recipe, folder: Path, name: str, budget: dict | None = None) -> tuple[Path, Path]:
    """Pack the trained example in-process into `folder`; returns (bundle, recipe path)."""
    bundle = folder / name
    recipe = shared_recipe(bundle, f"cli-{name}.yaml")
    if budget is not None:
        import yaml

        data = yaml.safe_load(recipe.read_text())
        data["budget"] = budget
        recipe.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["pack", str(recipe)])
    assert result.exit_code == (0 if budget is None else 3), result.output
    return bundle, recipe


@pytest.fixture(scope="session")
def packed_bundle(shared_recipe, tmp_path_factory) -> Path:
    """A passing x86 bundle of the trained example, made once; tests copy it before changing anything."""
    return _pack_once(shared_recipe, tmp_path_factory.mktemp("packed-bundle"), "digits")[0]


@pytest.fixture(scope="session")
def failed_bundle(shared_recipe, tmp_path_factory) -> tuple[Path, Path]:
    """A bundle that failed its budget (max_kl 0: no INT8 artifact is exact), and the recipe that says so."""
    return _pack_once(shared_recipe, tmp_path_factory.mktemp("failed-bundle"), "strict", budget={"max_kl": 0.0})
