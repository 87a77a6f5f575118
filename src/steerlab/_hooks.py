"""The one place where steerlab registers and removes PyTorch hooks.

Every handle is pushed onto an :class:`contextlib.ExitStack` the moment it exists, so a setup that fails
half-way still unwinds, and leaving the ``with`` block (normally or by an exception) removes exactly the
hooks we added: never anyone else's, and no module is ever replaced.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

__all__ = ["HookSet", "block_hidden", "with_block_hidden", "live_hooks"]

# Hooks added by every HookSet and not yet removed, over all threads (the server adds and removes them on its
# worker thread; the lock keeps the count exact where the GIL does not, as in free-threaded builds). The test
# suite's leak guard reads it, so a leak is seen on any model, not only on models the tests know about.
_live = 0
_live_lock = threading.Lock()


def live_hooks() -> int:
    """How many hooks added through a :class:`HookSet` are still registered, in this process."""
    return _live


def _count(delta: int) -> None:
    global _live
    with _live_lock:
        _live += delta


def block_hidden(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a block's output (blocks return a tensor or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output


def with_block_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden state replaced by ``hidden``, keeping the tensor/tuple shape it had."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


class HookSet:
    """A scope of hooks that removes all of them, and only them, on exit.

    Example:
        >>> with HookSet() as hooks:
        ...     hooks.forward(model.model.layers[3], lambda mod, args, out: None)
        ...     model(**batch)
        >>> # the hook is gone here, also if model(...) raised
    """

    def __init__(self) -> None:
        self._stack = ExitStack()

    def __enter__(self) -> HookSet:
        self._stack.__enter__()
        return self

    def __exit__(self, *exc: object) -> bool | None:
        return self._stack.__exit__(*exc)

    def _keep(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        """Count ``handle`` as live until this set removes it (exactly once: the stack runs each callback once)."""
        _count(1)

        def remove() -> None:
            handle.remove()
            _count(-1)

        self._stack.callback(remove)

    def forward(
        self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False, prepend: bool = False
    ) -> None:
        """Add a forward hook ``fn(module, args, output)`` (or ``(module, args, kwargs, output)``).

        ``prepend=True`` runs it before hooks already on the module: steering uses it so that every other
        observer, transformers' own ``output_hidden_states`` capture included, sees the steered output.
        """
        self._keep(module.register_forward_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def pre_forward(
        self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False, prepend: bool = False
    ) -> None:
        """Add a forward pre-hook ``fn(module, args)`` (or ``(module, args, kwargs)``)."""
        self._keep(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def on_hidden(
        self,
        module: nn.Module,
        is_input: bool,
        fn: Callable[[torch.Tensor], torch.Tensor | None],
        *,
        prepend: bool = False,
    ) -> None:
        """Hook ``fn(hidden) -> new hidden or None`` on the hidden states entering (``is_input``) or leaving
        ``module``, whether they travel as a tensor, the first element of a tuple, or ``hidden_states=``."""
        if is_input:

            def pre(mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
                if args and isinstance(args[0], torch.Tensor):
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                if isinstance(kwargs.get("hidden_states"), torch.Tensor):
                    new = fn(kwargs["hidden_states"])
                    return None if new is None else (args, {**kwargs, "hidden_states": new})
                raise TypeError(f"cannot find the input hidden states of {type(mod).__name__}")

            self.pre_forward(module, pre, with_kwargs=True, prepend=prepend)
        else:

            def post(mod: nn.Module, args: tuple, output: Any) -> Any:
                new = fn(block_hidden(output))
                return None if new is None else with_block_hidden(output, new)

            self.forward(module, post, prepend=prepend)

    def close(self) -> None:
        """Remove every hook added so far."""
        self._stack.close()
