"""`promote`: evaluate a registered version against its registry policy and move the alias only if
every rule passes (the decision is recorded either way; see biosig.registry.promotion)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from biosig.config import BaseConfig
from biosig.errors import ConfigError
from biosig.registry.promotion import Decision, promote


@dataclasses.dataclass
class PromoteConfig(BaseConfig):
    """`promote`: evaluate a registered version against its policy and move the alias if it passes."""

    FILE_KEYS = ("policies",)

    model: str = ""  # registered model name
    version: str = ""  # version number or alias; empty: the version holding @candidate
    to: Literal["staging", "production"] = "staging"
    policy: str = ""  # policy name; empty: the one whose applies_to matches the model
    policies: str = ""  # directory or file of policies; empty: ./registry_policies (else the project's)
    dry_run: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise ConfigError("config key 'model' is required: the registered model to promote")



def run_promote(config: PromoteConfig, *, nested: bool = False) -> Decision:
    return promote(config, nested=nested)
