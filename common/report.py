"""Markdown reports rendered from the JSON that runs write — never typed by hand.

A run that contributes to a report writes ``section.json`` into its output folder::

    {"name": "common", "title": "...", "order": 0, "command": "python -m ...",
     "summary": "markdown paragraph",
     "tables": [{"caption": "...", "source": "where the numbers come from",
                 "columns": ["model", "ms"], "rows": [["resnet18", 5.1]], "floatfmt": ".2f"}],
     "figures": [{"path": "latency.png", "caption": "..."}],
     "notes": ["..."]}

``python -m moonlit.common.report root=outputs/quickstart`` (config ``configs/common/report.yaml``)
collects every ``*/section.json`` below that folder and writes ``REPORT.md`` beside them, tables
rendered from the numbers in the JSON.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .config import hydra_app

SECTION_FILE = "section.json"
REQUIRED_KEYS = ("name", "title")


def write_section(out_dir: str | os.PathLike[str], section: dict[str, Any]) -> Path:
    """Validate and write ``section.json`` atomically (temp file + rename)."""
    for key in REQUIRED_KEYS:
        if key not in section:
            raise ValueError(f"report section is missing '{key}' (has {sorted(section)})")
    for table in section.get("tables", []):
        _check_table(table, section["name"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SECTION_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(section, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to a report section")


def _check_table(table: dict[str, Any], section_name: str) -> None:
    columns = table.get("columns")
    if not columns:
        raise ValueError(f"a table of section '{section_name}' has no columns")
    for i, row in enumerate(table.get("rows", [])):
        if len(row) != len(columns):
            raise ValueError(
                f"row {i} of table '{table.get('caption', '?')}' in section '{section_name}' has "
                f"{len(row)} cells, expected {len(columns)} ({columns})"
            )


def format_cell(value: Any, floatfmt: str = ".3g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return format(value, floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_table(table: dict[str, Any]) -> str:
    """One markdown table, with its caption above and its source below."""
    _check_table(table, "?")
    floatfmt = table.get("floatfmt", ".3g")
    lines = []
    if table.get("caption"):
        lines += [f"**{table['caption']}**", ""]
    columns = [format_cell(c) for c in table["columns"]]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in table.get("rows", []):
        lines.append("| " + " | ".join(format_cell(v, floatfmt) for v in row) + " |")
    if table.get("source"):
        lines += ["", f"*Source: {table['source']}*"]
    return "\n".join(lines)


def render_section(section: dict[str, Any], section_dir: Path, report_dir: Path) -> str:
    parts = [f"## {section['title']}"]
    if section.get("summary"):
        parts.append(section["summary"])
    if section.get("command"):
        parts.append(f"Command: `{section['command']}`")
    for table in section.get("tables", []):
        parts.append(render_table(table))
    for figure in section.get("figures", []):
        rel = os.path.relpath(section_dir / figure["path"], report_dir)
        parts.append(f"![{figure.get('caption', '')}]({rel})\n\n*{figure.get('caption', '')}*")
    notes = section.get("notes", [])
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    return "\n\n".join(parts)


def load_sections(root: Path) -> list[tuple[dict[str, Any], Path]]:
    sections = []
    for path in sorted(root.glob(f"*/{SECTION_FILE}")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        sections.append((data, path.parent))
    return sorted(sections, key=lambda item: (item[0].get("order", 100), item[0]["name"]))


def build_report(root: str | os.PathLike[str], title: str = "moonlit quickstart report") -> Path:
    """Render ``root/REPORT.md`` from every ``root/*/section.json``; returns its path."""
    root = Path(root)
    sections = load_sections(root)
    if not sections:
        raise FileNotFoundError(f"no {SECTION_FILE} found in the sub-folders of {root}; run a quickstart section first")
    body = [f"# {title}", ""]
    body.append("Generated by `python -m moonlit.common.report` from the `section.json` files that the runs "
                "wrote; every number below comes from those files.")
    body.append("")
    body.append("Sections: " + ", ".join(f"[{s['title']}](#{_anchor(s['title'])})" for s, _ in sections))
    for section, section_dir in sections:
        body += ["", render_section(section, section_dir, root)]
    out = root / "REPORT.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(body).rstrip() + "\n")
    os.replace(tmp, out)
    return out


def _anchor(title: str) -> str:
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return kept.strip().replace(" ", "-")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.common.report``: :func:`build_report` of ``cfg.root``."""
    return {"report": build_report(str(cfg.root), str(cfg.title))}


@hydra_app("common", "report")
def main(cfg: DictConfig) -> None:
    print(run(cfg)["report"])


if __name__ == "__main__":
    main()
