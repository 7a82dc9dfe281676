"""How each of seqshard's interfaces spells a setting, so that a message names the option the user can change.

The same validation runs behind the `seqshard` command, the Snakemake workflow and the Python API; a message
that says "set `on_invalid: skip`" is only useful to someone editing a config file. Code that tells the user to
change a setting asks the interface it was given for the spelling instead of hard-coding one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Settings the workflow reads from the sample sheet's columns rather than from config.yaml, and that a request to
# the HTTP server sets in its options rather than the server's command line.
SAMPLE_SHEET_COLUMNS = frozenset({"molecule"})
REQUEST_OPTIONS = frozenset({"molecule"})
# Config keys whose command-line option has another name: a model entry's `architecture` is `--model`.
OPTION_NAMES = {"architecture": "model"}


@dataclass(frozen=True)
class Interface:
    """One way of running seqshard: `cli` (the command), `workflow` (config.yaml + sample sheet), `serve` (a request
    to the HTTP server, which `seqshard serve` was started for) or `python`."""

    name: Literal["cli", "workflow", "serve", "python"]

    def setting(self, key: str, value: str) -> str:
        """How to write `key` = `value` here, e.g. "`--on-invalid skip`" or "`on_invalid: skip` in the config"."""
        option = OPTION_NAMES.get(key, key).replace("_", "-")
        if self.name == "cli":
            return f"`--{option} {value}`"
        if self.name == "workflow":
            if key in SAMPLE_SHEET_COLUMNS:
                return f"the sample's `{key}` column to `{value}` in the sample sheet"
            return f"`{key}: {value}` in the config"
        if self.name == "serve":
            if key in REQUEST_OPTIONS:
                return f'`"options": {{"{key}": "{value}"}}` in the request'
            return f"`--{option} {value}` when starting `seqshard serve`"
        return f"`{key}={value!r}`"


CLI = Interface("cli")
WORKFLOW = Interface("workflow")
SERVE = Interface("serve")
PYTHON = Interface("python")
