"""Write docs/configuration.md from the Settings fields and `iei embed`'s own flags (their help text
is the single source).
`python scripts/gen_config_docs.py --check` fails if the file is out of date (a test runs it)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iei.bulk.command import SERVER_ONLY_SETTINGS, add_embed_arguments  # noqa: E402
from iei.config import Settings  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def render() -> str:
    lines = [
        "# Configuration",
        "",
        "Every setting is a flag of `iei serve` and an environment variable (flags win over the environment, "
        "which wins over the default). Generated from `iei/config.py` by `scripts/gen_config_docs.py`; "
        "`iei serve --help` prints the same.",
        "",
        "| flag | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            flag += f" / --no-{f.name.replace('_', '-')}"
        envs = ", ".join(f"`{e}`" for e in f.metadata["env"])
        choices = f.metadata["choices"]
        meaning = (f.metadata["help"] + (f" One of: {', '.join(choices)}." if choices else "")).replace("|", "/")
        lines.append(f"| `{flag}` | {envs} | `{f.default}` | {meaning} |")
    return "\n".join(lines + render_embed()) + "\n"


def render_embed() -> list[str]:
    """`iei embed`'s flags beyond the settings above (which it shares, except the server-only ones)."""
    parser = argparse.ArgumentParser(prog="iei embed")
    add_embed_arguments(parser)
    settings = {f.name for f in dataclasses.fields(Settings)}
    lines = [
        "",
        "## `iei embed`",
        "",
        ("`iei embed INPUT --output OUT` takes the settings above (flags and environment variables) except "
        f"{', '.join('`--' + n.replace('_', '-') + '`' for n in SERVER_ONLY_SETTINGS)}, and these flags of its own "
        "(see [bulk.md](bulk.md)):"),
        "",
        "| flag | default | meaning |",
        "|---|---|---|",
    ]
    for action in parser._actions:
        if action.dest in settings or action.dest == "help" or not action.option_strings:
            continue
        flag = " / ".join(f"`{o}`" for o in action.option_strings)
        choices = f" One of: {', '.join(action.choices)}." if action.choices else ""
        lines.append(f"| {flag} | `{action.default}` | {(action.help + choices).replace('|', '/')} |")
    return lines


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if OUT.read_text() != text:
            sys.exit("docs/configuration.md is out of date: run python scripts/gen_config_docs.py")
    else:
        OUT.write_text(text)
