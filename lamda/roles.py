"""Roles by pre-conditioning (paper §8): a few dialog turns placed before the conversation make
LaMDA speak as, e.g., Mount Everest or a music recommender, with no extra training.

Roles are JSON files (one per role) in data/roles/ or a directory given by LAMDA_ROLES_DIR:
    {"name": "everest", "model": "lamda-everest", "description": "...",
     "preconditioning": [{"speaker": "lamda", "text": "Hi, I'm Mount Everest. ..."}]}
`model` is the name the HTTP API lists for the role. The plain `lamda` role has no turns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lamda.data import Turn, parse_turns

ROLES_DIR = Path(__file__).resolve().parent.parent / "data" / "roles"


@dataclass(frozen=True)
class Role:
    name: str
    model: str  # the model id clients ask for (OpenAI API "model")
    description: str
    preconditioning: tuple[Turn, ...]

    def context(self, conversation: list[Turn]) -> list[Turn]:
        """The model's context: the role's turns, then the conversation."""
        return [*self.preconditioning, *conversation]


DEFAULT = Role("lamda", "lamda", "LaMDA without a role.", ())


def parse_role(d: dict, source: str = "<role>") -> Role:
    try:
        name, model = d["name"], d.get("model", f"lamda-{d['name']}")
        if not isinstance(name, str) or not name or not isinstance(model, str) or not model:
            raise ValueError("'name' and 'model' must be non-empty strings")
        return Role(name, model, str(d.get("description", "")), parse_turns(d, "preconditioning"))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{source}: bad role: {e}") from None


def load_roles(directory: str | os.PathLike | None = None) -> dict[str, Role]:
    """Roles by model id: the default `lamda` plus every *.json file in the directory."""
    directory = Path(directory or os.environ.get("LAMDA_ROLES_DIR") or ROLES_DIR)
    roles = {DEFAULT.model: DEFAULT}
    for path in sorted(directory.glob("*.json")):
        with open(path, encoding="utf-8") as f:
            role = parse_role(json.load(f), str(path))
        if role.model in roles:
            raise ValueError(f"{path}: model id {role.model!r} is defined twice")
        roles[role.model] = role
    return roles
