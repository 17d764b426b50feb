"""A wheel of persona works outside the source tree: it carries the library migrations and the starter personas."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_carries_the_migrations_and_starters_and_makes_a_library_from_them(tmp_path):
    pytest.importorskip("setuptools")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("persona-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    scripts = sorted(name for name in names if name.startswith("persona/_migrations/"))
    assert {
        f"persona/_starters/{path.name}"
        for path in (ROOT / "personas").iterdir()
        if path.suffix != ".sh"
    } <= set(names)
    expected = sorted(
        f"persona/_migrations/{path.relative_to(ROOT / 'migrations').as_posix()}"
        for path in (ROOT / "migrations").rglob("*")
        if path.suffix in (".py", ".mako")
    )
    assert scripts == expected
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import persona, sys; from pathlib import Path; "
        "from persona.library.migrate import migrations_dir; from persona.library import open_library; "
        "assert Path(persona.__file__).is_relative_to(Path(sys.argv[1])), persona.__file__; "
        "assert migrations_dir().is_relative_to(Path(sys.argv[1])), migrations_dir(); "
        "names = sorted(p.name for p in open_library(Path(sys.argv[2])).list_personas()); print(' '.join(names))"
    )
    env = {key: value for key, value in os.environ.items() if key != "PERSONA_NO_STARTERS"}
    env.update(PYTHONPATH=str(site), PERSONA_HOME=str(tmp_path / "home"))
    run = subprocess.run(
        [sys.executable, "-c", code, str(site), str(tmp_path / "library.db")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    starters = sorted(path.stem for path in (ROOT / "personas").glob("*.safetensors"))
    assert (
        run.stdout.split() == starters and len(starters) >= 5
    )  # a new library gets the starters from the wheel
