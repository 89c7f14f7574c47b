"""README's layout table names what is in the tree: every path it lists exists, and every package
and top-level folder of the project is listed."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):].split("\n\n", 2)[1]
    return [line for line in table.splitlines() if line.startswith("| `")]


def test_listed_paths_exist():
    missing = []
    for row in layout_rows():
        path_cell, holds = row.split("|")[1:3]
        for path in re.findall(r"`([^`]+)`", path_cell):
            if not (ROOT / path).exists():
                missing.append(path)
        folder = re.findall(r"`([^`]+/)`", path_cell)
        for name in re.findall(r"`([\w./]+\.(?:py|md|yaml|wav))`", holds):
            if folder and not (ROOT / folder[0] / name).exists() and not (ROOT / name).exists():
                missing.append(folder[0] + name)
    assert not missing, missing


def test_every_package_and_folder_is_listed():
    listed = " ".join(row.split("|")[1] for row in layout_rows())
    wanted = [f"hpo_engine/{p.name}/" for p in sorted((ROOT / "hpo_engine").iterdir())
              if (p / "__init__.py").is_file()]
    wanted += ["csrc/", "bench/", "configs/", "docs/", "tests/"]
    assert [w for w in wanted if f"`{w}`" not in listed] == []
