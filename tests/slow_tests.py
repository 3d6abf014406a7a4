"""Write tests/slow_tests.txt: the tests that took more than `--over` seconds in a full run.

    python -m pytest -q --junitxml=/tmp/t.xml && python tests/slow_tests.py /tmp/t.xml

tests/conftest.py marks the listed tests `slow`, so that `python -m pytest -q -m "not slow"` is the
quick subset (README, "Quick start"). Tests marked `slow` in their code stay slow whatever their time.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent


def node_id(case: ET.Element) -> str:
    """pytest's node id of a junit testcase (classname `tests.test_x` or `tests.test_x.TestClass`)."""
    parts = case.get("classname", "").split(".")
    module = "/".join(parts[:2]) + ".py"
    return "::".join([module, *parts[2:], case.get("name", "")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("junit", type=Path, help="the --junitxml file of a full run")
    ap.add_argument("--over", type=float, default=0.3, help="seconds above which a test is slow (default 0.3)")
    args = ap.parse_args()
    cases = list(ET.parse(args.junit).getroot().iter("testcase"))
    slow = sorted(node_id(c) for c in cases if float(c.get("time", 0)) > args.over and c.find("skipped") is None)
    quick = sum(float(c.get("time", 0)) for c in cases if node_id(c) not in slow and c.find("skipped") is None)
    header = [f"# written by tests/slow_tests.py from {args.junit.name}: tests over {args.over:g} s in that run",
              f"# ({len(slow)} of {len(cases)}; the others took {quick:.0f} s together)"]
    (HERE / "slow_tests.txt").write_text("\n".join(header + slow) + "\n")
    print(f"{len(slow)} of {len(cases)} tests over {args.over:g} s; the rest took {quick:.0f} s together")


if __name__ == "__main__":
    main()
