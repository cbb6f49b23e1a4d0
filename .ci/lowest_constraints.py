"""Write what `tox -e lowest` installs: the py env's requirements, each dependency at its floor.

Usage: python .ci/lowest_constraints.py OUT_DIR

Reads tox.ini's [base] deps and test_deps (what `tox -e py` installs), follows every
`-e {toxinidir}/packages/NAME[extras]` line into that package's pyproject.toml (its
`dependencies`, the extras named, and the pe-* packages it depends on with their extras) and
writes two files into OUT_DIR:

- lowest-constraints.txt: `name==X` for every `name>=X` (or `~=X`, `==X`) that a package declares,
  the highest X where two packages declare one name. Names that tox.ini's own constraint files
  pin (torch) keep that pin: only one torch wheel is installable here.
- lowest-requirements.txt: `-c` that file, then [base] deps and test_deps as they stand.

Test-only dependencies stay free (the py env's harness), except those in FLOORED_TEST_DEPS.

A dependency with no lower bound is an error: a floor that no env installs cannot be known true.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
INTERNAL_PREFIX = "pe-"
FLOOR_OPERATORS = (">=", "~=", "==")
# openai's later releases need a newer anyio, pydantic and typing-extensions than the packages'
# floors; left free, pip walks back through a hundred of them (over 10 minutes) to find one.
FLOORED_TEST_DEPS = {"openai"}


def base_lines() -> list[str]:
    """[base] deps then test_deps from tox.ini, with {toxinidir} filled in."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    text = ini["base"]["deps"] + "\n" + ini["base"]["test_deps"]
    lines = [line.strip() for line in text.splitlines()]
    return [line.replace("{toxinidir}", str(ROOT)) for line in lines if line]


def floored_test_deps(lines: list[str]):
    """The test_deps in FLOORED_TEST_DEPS, to pin at their floors like the packages' own."""
    for line in lines:
        if not line.startswith("-"):
            req = Requirement(line)
            if canonicalize_name(req.name) in FLOORED_TEST_DEPS:
                yield req, "tox.ini [base] test_deps"


def pyprojects() -> dict[str, Path]:
    """Project name -> its pyproject.toml, for every package under packages/."""
    found = {}
    for path in sorted(ROOT.glob("packages/*/pyproject.toml")):
        name = tomllib.loads(path.read_text())["project"]["name"]
        found[canonicalize_name(name)] = path
    return found


def roots(lines: list[str], projects: dict[str, Path]) -> list[tuple[str, set[str]]]:
    """The (project name, extras) that the `-e packages/...` lines install."""
    by_dir = {path.parent.resolve(): name for name, path in projects.items()}
    found = []
    for line in lines:
        if not line.startswith("-e "):
            continue
        spec = line[3:].strip()
        path, _, extras = spec.partition("[")
        name = by_dir[Path(path).resolve()]
        found.append((name, {e.strip() for e in extras.rstrip("]").split(",") if e.strip()}))
    return found


def parts(name: str, extras: set[str] | frozenset[str]) -> list[tuple[str, str]]:
    """A package's dependency lists to read: "" for `dependencies`, then one per extra."""
    return [(name, ""), *((name, extra) for extra in sorted(extras))]


def declared(root_specs: list[tuple[str, set[str]]], projects: dict[str, Path]):
    """Every external requirement the installed packages declare, with the file that declares it."""
    todo = [part for name, extras in root_specs for part in parts(name, extras)]
    seen: set[tuple[str, str]] = set()
    while todo:
        part = todo.pop()
        if part in seen:
            continue
        seen.add(part)
        name, extra = part
        path = projects[name]
        project = tomllib.loads(path.read_text())["project"]
        deps = project["optional-dependencies"][extra] if extra else project["dependencies"]
        for dep in deps:
            req = Requirement(dep)
            if req.marker is not None and not req.marker.evaluate():
                continue
            dep_name = canonicalize_name(req.name)
            if dep_name.startswith(INTERNAL_PREFIX):
                todo += parts(dep_name, req.extras)
            else:
                yield req, str(path.relative_to(ROOT))


def floor(req: Requirement, where: str) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator in FLOOR_OPERATORS]
    if not floors:
        sys.exit(f"{where}: {req} has no lower bound; declare `>=` the oldest version that works")
    return max(floors)


def pinned_by_tox(lines: list[str]) -> set[str]:
    """Names that tox.ini's `-c` constraint files already pin (torch: one wheel here)."""
    names = set()
    for line in lines:
        if line.startswith("-c "):
            for pin in Path(line[3:].strip()).read_text().splitlines():
                pin = pin.split("#")[0].strip()
                if pin:
                    names.add(canonicalize_name(Requirement(pin).name))
    return names


def floors(lines: list[str]) -> dict[str, tuple[Version, list[str]]]:
    projects = pyprojects()
    skip = pinned_by_tox(lines)
    found: dict[str, tuple[Version, list[str]]] = {}
    for req, where in [*declared(roots(lines, projects), projects), *floored_test_deps(lines)]:
        name = canonicalize_name(req.name)
        if name in skip:
            continue
        version = floor(req, where)
        old, sources = found.get(name, (version, []))
        found[name] = (max(old, version), [*sources, f"{where}: {req}"])
    return found


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    lines = base_lines()
    constraints = [
        f"{name}=={version}  # {'; '.join(sorted(set(sources)))}"
        for name, (version, sources) in sorted(floors(lines).items())
    ]
    (out / "lowest-constraints.txt").write_text("\n".join(constraints) + "\n")
    requirements = [f"-c {out.resolve() / 'lowest-constraints.txt'}", *lines]
    (out / "lowest-requirements.txt").write_text("\n".join(requirements) + "\n")
    print("\n".join(constraints))


if __name__ == "__main__":
    main()
