"""Prints the requirements of the oldest stack BlockLab supports, from pyproject.toml (the floors are declared
there once): the worker extra's floors installed exactly (`>=X` as `==X`), the backend's and the test extra's
requirements as they stand. Used by .ci/oldest-stack."""
import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
floors = []
for req in project["optional-dependencies"]["worker"]:
    m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)>=([^,;\s]+)", req)
    if not m:
        sys.exit(f"the worker extra's {req!r} is not a plain floor (NAME>=VERSION): the oldest stack cannot pin it")
    floors.append(f"{m.group(1)}=={m.group(2)}")
print("\n".join([*floors, *project["dependencies"], *project["optional-dependencies"]["test"]]))
