"""The README's configuration reference is generated from the settings models; this
keeps the two in sync. To update the README after changing a setting:

    .venv/bin/python -c "from tests.monitor.test_readme import update; update()"
"""

from __future__ import annotations

import re
from pathlib import Path

from driftline.monitor.config import reference_table

README = Path(__file__).resolve().parents[2] / "README.md"
_SECTION = re.compile(r"(<!-- reference-table:start -->\n)(.*?)(<!-- reference-table:end -->)", re.S)


def update() -> None:
    text = README.read_text()
    README.write_text(_SECTION.sub(lambda m: m.group(1) + reference_table() + "\n" + m.group(3), text))


def test_readme_lists_every_setting_as_the_code_defines_it():
    match = _SECTION.search(README.read_text())
    assert match, "README.md lost its reference-table markers"
    assert match.group(2).strip() == reference_table().strip(), (
        "README.md's configuration reference is stale: run the update() of this module"
    )
