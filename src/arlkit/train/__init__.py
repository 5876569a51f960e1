"""The RL loop, SFT, checkpoints and distributed launch.

`arlkit.train(config, task=...)` (arlkit/api.py) shares its name with this package, and Python binds
`arlkit.train` to the package once any of its modules is imported; so the package module itself is made
callable, and both `arlkit.train(...)` and `arlkit.train.loop` work whatever was imported first.
"""

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from arlkit.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
