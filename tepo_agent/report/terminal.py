"""Per-token entropy colouring in the terminal, for ``tepo-agent run`` and ``trajectories show``.

Each assistant token gets the background colour the HTML report gives it
(:func:`tepo_agent.report.colour.entropy_colour`, black text on white-to-red), written as ANSI
escapes by ``rich``. Colour is used only on a terminal: :func:`colour_wanted` is False when the
output is not a TTY, with ``--no-color``, or when ``$NO_COLOR`` is set (no-color.org).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from rich.console import Console
from rich.text import Text

from tepo_agent.report.colour import entropy_colour, hex_colour, scale_max
from tepo_agent.report.tokens import TokenDecoder, load_decoder
from tepo_agent.trajectory import Trajectory, Turn


def colour_wanted(no_color: bool, stream: IO[str]) -> bool:
    """Whether to colour: a TTY, no ``--no-color`` and no ``$NO_COLOR``."""
    isatty = getattr(stream, "isatty", None)
    return not no_color and "NO_COLOR" not in os.environ and bool(isatty and isatty())


def _ansi(text: Text) -> str:
    console = Console(force_terminal=True, color_system="truecolor", width=10_000)
    with console.capture() as capture:
        console.print(text, end="", soft_wrap=True)
    return capture.get()


def coloured(pieces: Sequence[str], entropies: Sequence[float], top: float) -> str:
    """The pieces joined, each on the background colour of its entropy (ANSI escapes)."""
    text = Text()
    for piece, h in zip(pieces, entropies, strict=False):
        text.append(piece, style=f"black on {hex_colour(entropy_colour(h, top))}")
    text.append("".join(pieces[len(entropies) :]))
    return _ansi(text)


def legend(top: float) -> str:
    """One line: the scale from 0 to ``top`` nats in five coloured cells."""
    text = Text("token entropy: ")
    for k in range(5):
        h = top * k / 4
        text.append(f" {h:.2f} ", style=f"black on {hex_colour(entropy_colour(h, top))}")
    text.append(" nats")
    return _ansi(text)


@dataclass(frozen=True)
class TurnColourer:
    """Colours assistant turns on one scale (``top`` nats) for a whole trajectory; a turn
    without entropies, or without a tokenizer to split it, keeps its plain text."""

    decoder: TokenDecoder
    top: float

    @classmethod
    def for_trajectory(cls, trajectory: Trajectory, decoder: TokenDecoder) -> TurnColourer:
        ents = (h for t in trajectory.assistant_turns() for h in (t.entropies or ()))
        return cls(decoder, scale_max(ents))

    def __call__(self, turn: Turn) -> str:
        if not turn.entropies or self.decoder.tokenizer is None:
            return turn.text
        return coloured(self.decoder.pieces(turn.token_ids), turn.entropies, self.top)


def print_coloured_turns(trajectory: Trajectory, decoder: TokenDecoder, prefix: str = "") -> None:
    """Print every assistant turn of ``trajectory`` with its tokens coloured, and the legend."""
    colour = TurnColourer.for_trajectory(trajectory, decoder)
    for turn in trajectory.assistant_turns():
        print(f"{prefix}{colour(turn)}")
    print(f"{prefix}{legend(colour.top)}")


__all__ = [
    "TokenDecoder",
    "TurnColourer",
    "colour_wanted",
    "coloured",
    "legend",
    "load_decoder",
    "print_coloured_turns",
]
