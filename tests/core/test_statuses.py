"""Job and run statuses are the enums of core.protocol (JobStatus, RunStatus): no module compares with, or
assigns, a status spelled as a literal string (which would drift from the enum unnoticed)."""
from __future__ import annotations

import ast
from pathlib import Path

from core.protocol import JobStatus, RunStatus

ROOT = Path(__file__).resolve().parents[2]
STATUSES = {s.value for s in JobStatus} | {s.value for s in RunStatus}
CODE = ("core", "backend", "worker")


def literal_statuses(source: str) -> list[tuple[int, str]]:
    """(line, value) of every status literal compared with (==, !=, in) or assigned to a name called status."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "status" for t in node.targets):
            operands = [node.value]
        else:
            continue
        found += [(o.lineno, o.value) for o in operands
                  if isinstance(o, ast.Constant) and isinstance(o.value, str) and o.value in STATUSES]
    return found


def test_the_rule_sees_a_planted_literal():
    planted = 'status = "stopped"\nif summary["status"] == "succeeded":\n    pass\nok = status == RunStatus.STOPPED\n'
    assert literal_statuses(planted) == [(1, "stopped"), (2, "succeeded")]


def test_no_module_spells_a_status_as_a_literal():
    bad = [f"{path.relative_to(ROOT)}:{line}: {value!r}" for top in CODE for path in sorted((ROOT / top).rglob("*.py"))
           for line, value in literal_statuses(path.read_text())]
    assert bad == [], "use core.protocol.JobStatus / RunStatus:\n" + "\n".join(bad)
