"""The documentation stays true: its links lead somewhere, the files and commands it names exist,
the API reference is the OpenAPI document's, and nothing cites a document the repository lacks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
import pytest

from quotagate.api.reference import reference
from quotagate.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file()]


def text_files() -> list[Path]:
    suffixes = {".md", ".py", ".lua", ".toml", ".yml", ".yaml", ".template", ".ts", ".txt", ""}
    files = []
    for path in tracked_files():
        if path.suffix not in suffixes or path.is_symlink():
            continue
        try:
            files.append((path, path.read_text()))
        except UnicodeDecodeError:
            continue
    return [p for p, _ in files]


def markdown_files() -> list[Path]:
    return [p for p in tracked_files() if p.suffix == ".md"]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_there_is_a_docs_folder_with_its_pages() -> None:
    for page in ("architecture.md", "api-reference.md", "operations.md", "benchmark.md"):
        assert (ROOT / "docs" / page).is_file(), page
    assert (ROOT / "CHANGELOG.md").is_file()


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_that_exists(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == []


# Documents that are not in the repository, by the names they went by.
NOT_HERE = re.compile(
    r"DESIGN\.md|API\.md|STYLE\.md|DESIGN invariant|[Ii]nvariant \d|product guide"
)


def test_nothing_cites_a_document_that_is_not_in_the_repository() -> None:
    citing = []
    for path in text_files():
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if NOT_HERE.search(line):
                citing.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert citing == []


# A repository path in backticks: `src/quotagate/engine/keys.py`, `docs/faults.md`, `lua/`.
REPO_PATH = re.compile(r"`((?:src|tests|lua|docs|examples|scripts)/[^`\s]*)`")


def test_every_repository_path_the_docs_name_exists() -> None:
    missing = []
    for page in markdown_files():
        for path in REPO_PATH.findall(page.read_text()):
            if any(c in path for c in "<>*{}"):
                continue  # a pattern, not a path
            if not (ROOT / path.rstrip("/")).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert missing == []


def test_the_api_reference_is_rendered_from_the_current_openapi_document() -> None:
    committed = (ROOT / "docs" / "api-reference.md").read_text()
    assert committed == reference(), (
        "docs/api-reference.md is stale: python -m quotagate.api.reference > docs/api-reference.md"
    )


# `quotagate <command> [<subcommand>] [--flag ...]` as the docs show it, in code spans and blocks.
COMMAND = re.compile(r"(?:^|[`\s$(])quotagate((?: +[a-z][a-z-]*)+)((?: +[^\s`|#;)]+)*)")


def _documented_commands() -> list[tuple[str, list[str], list[str]]]:
    found = []
    for page in markdown_files():
        for line in page.read_text().splitlines():
            for words, rest in COMMAND.findall(line):
                tokens = rest.replace("[", " ").replace("]", " ").split()
                flags = [t.split("=", 1)[0] for t in tokens if t.startswith("--") and t != "--"]
                found.append((str(page.relative_to(ROOT)), words.split(), flags))
    return found


def _resolve(words: list[str]) -> tuple[click.Command, list[str]] | None:
    """The command the words name, and the words left over (arguments)."""
    command: click.Command = cli
    for i, word in enumerate(words):
        if not isinstance(command, click.Group):
            return command, words[i:]
        sub = command.commands.get(word)
        if sub is None:
            return None if i == 0 else (command, words[i:])
        command = sub
    return command, []


def test_every_documented_command_and_flag_exists() -> None:
    wrong = []
    for page, words, flags in _documented_commands():
        resolved = _resolve(words)
        if resolved is None:
            # Prose such as "quotagate is a gateway": only a known first word is a command.
            continue
        command, _ = resolved
        options = {name for p in command.params for name in getattr(p, "opts", [])}
        options |= {name for p in command.params for name in getattr(p, "secondary_opts", [])}
        options |= {"--help", "-h", "--version"}
        for flag in flags:
            if flag not in options:
                wrong.append(f"{page}: quotagate {' '.join(words)} {flag}")
    assert wrong == []
