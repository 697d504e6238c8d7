"""`promote`: evaluate a registered version against its registry policy and move the alias only if
every rule passes (the decision is recorded either way; see biosig.registry.promotion)."""

from __future__ import annotations

from biosig.commands.configs import PromoteConfig
from biosig.registry.promotion import Decision, promote


def run_promote(config: PromoteConfig, *, nested: bool = False) -> Decision:
    return promote(config, nested=nested)
