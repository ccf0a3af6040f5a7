"""The README's configuration table, from the Settings object (one row per variable).

    python scripts/settings_table.py            # print it
    python scripts/settings_table.py --write    # replace the table in README.md
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatterbox_worker.settings import Settings


def default_text(value) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def rows() -> list[str]:
    lines = ["| variable | default | what it sets |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        lines.append(f"| `{Settings.env_name(name)}` | {default_text(field.default)} | {field.description} |")
    return lines


README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- settings-table -->", "<!-- /settings-table -->"


def write_readme() -> None:
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + START + "\n" + "\n".join(rows()) + "\n" + END + tail, encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        print("\n".join(rows()))
