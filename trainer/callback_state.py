"""A base for callbacks with checkpointable state (STYLE.md, "Callbacks are thin adapters").

Subclasses declare their checkpointable attributes in a class-level tuple ``_state_attrs``;
``state_dict``/``load_state_dict`` are generic over it and raise on unknown or missing keys, so a
renamed or forgotten attribute fails loudly instead of silently restarting. ``state_key`` derives
only from the callback's class and its ``name`` argument, never from tunable hyperparameters
(Lightning merely warns on a ``state_key`` mismatch and the state restarts from zero).
"""

from __future__ import annotations

import copy
from typing import Any

from lightning.pytorch import Callback

__all__ = ["StatefulCallback"]


class StatefulCallback(Callback):
    """A Lightning ``Callback`` whose state is the attributes named in ``_state_attrs``.

    Args:
        name: the identity of this callback instance in checkpoints; two instances of one class in
            one trainer need different names.
    """

    _state_attrs: tuple[str, ...] = ()

    def __init__(self, name: str) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
        self.name = name

    @property
    def state_key(self) -> str:
        """``ClassName{'name': ...}`` (Lightning's format): stable across runs whatever the hyperparameters."""
        return self._generate_state_key(name=self.name)

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of every attribute in ``_state_attrs``."""
        return {attr: copy.deepcopy(getattr(self, attr)) for attr in self._state_attrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes of ``_state_attrs``; unknown or missing keys raise ``KeyError``."""
        expected = set(self._state_attrs)
        unknown = sorted(set(state_dict) - expected)
        missing = sorted(expected - set(state_dict))
        if unknown or missing:
            raise KeyError(
                f"{self.state_key}: checkpoint state does not match this callback "
                f"(unknown keys: {unknown}, missing keys: {missing})"
            )
        for attr in self._state_attrs:
            setattr(self, attr, copy.deepcopy(state_dict[attr]))
