"""The exit statuses are listed once, in docs/cli.md, and everything else agrees with that list:
`quotagate --help`, the CLI's constants, any other page that lists them, every `exit N`."""

from __future__ import annotations

import re
from pathlib import Path

from quotagate.cli import failures
from quotagate.cli.failures import EXIT_CODES_HELP

ROOT = Path(__file__).resolve().parents[2]
CLI_PAGE = ROOT / "docs" / "cli.md"

# A table row `| 2 | bad input ... |`, and the header of such a table.
TABLE_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(.+?)\s*\|\s*$")
TABLE_HEADER = re.compile(r"^\|\s*(?:exit )?(?:status|code)\s*\|", re.IGNORECASE)
HTTP_STATUS_MIN = 200
# A list written in prose: "**Exit codes**: 0 done; 1 ...", "Exit status: ...".
PROSE_LIST = re.compile(r"\*\*exit (?:codes|statuses)\*\*|^exit (?:codes|status):", re.I)
# One status named in prose: "exit 4", "exit status 2", "exit code 3".
MENTION = re.compile(r"\bexit (?:status |code )?(\d+)\b", re.IGNORECASE)


def exit_tables(text: str) -> list[dict[int, str]]:
    """Every markdown table of exit statuses on a page: status to meaning.

    A table headed `status` or `code` is one of HTTP statuses when it holds any status from
    200 up: exit statuses stop at 130.
    """
    tables: list[dict[int, str]] = []
    current: dict[int, str] | None = None
    for line in text.splitlines():
        if TABLE_HEADER.match(line):
            current = {}
            tables.append(current)
        elif current is not None and (row := TABLE_ROW.match(line)):
            current[int(row.group(1))] = row.group(2)
        elif not line.startswith("|"):
            current = None
    return [table for table in tables if table and max(table) < HTTP_STATUS_MIN]


def documented() -> dict[int, str]:
    (table,) = exit_tables(CLI_PAGE.read_text())
    return table


def test_the_cli_page_lists_the_statuses_the_cli_uses() -> None:
    constants = {
        value
        for name, value in vars(failures).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert set(documented()) == constants | {0}


def test_quotagate_help_lists_the_same_statuses() -> None:
    in_help = {int(m) for m in re.findall(r"^\s+(\d+)\s{2,}", EXIT_CODES_HELP, re.MULTILINE)}
    assert in_help == set(documented())


def test_no_other_page_lists_the_statuses_differently() -> None:
    table = documented()
    differing = []
    for page in sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]):
        if page == CLI_PAGE:
            continue
        text = page.read_text()
        for other in exit_tables(text):
            if other != table:
                differing.append(f"{page.name}: {other}")
        for line in text.splitlines():
            if PROSE_LIST.search(line):
                differing.append(f"{page.name}: a list in prose, link to cli.md: {line.strip()}")
    assert differing == []


def test_every_exit_status_a_page_names_is_one_the_cli_page_lists() -> None:
    known = set(documented())
    unknown = []
    for page in sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]):
        if page.name == "simulation.md":
            continue  # `scripts/simulate` is not the `quotagate` command: its statuses are its own
        for status in MENTION.findall(page.read_text()):
            if int(status) not in known:
                unknown.append(f"{page.name}: exit {status}")
    assert unknown == []


def test_the_readers_of_exit_tables_find_what_they_look_for() -> None:
    page = (
        "| status | meaning |\n|---|---|\n| 0 | done |\n| 3 | did not answer |\n\ntext | 9 | x |\n"
    )
    assert exit_tables(page) == [{0: "done", 3: "did not answer"}]
    assert exit_tables("| status | meaning |\n|---|---|\n| 200 | OK |\n| 3 | x |\n") == []
    assert PROSE_LIST.search("**Exit codes** of these commands: 0 done; 1 drift")
    assert MENTION.findall("refused (exit 4), exit status 2 and exit code 3") == ["4", "2", "3"]
