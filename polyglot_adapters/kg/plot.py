"""A grouped bar chart of entity-alignment Hits@1 per language, written as PNG with the standard library only.

No plotting library is a dependency of the toolkit, so the chart is rasterised here: bars per
language and system, a 0-100 axis with grid lines every 20 points, language codes under the
groups and a legend, in a 3x5 pixel font scaled up. The PNG is RGB, 8 bits, zlib-compressed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

__all__ = ["alignment_plot", "bar_chart_png"]

_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "a": "010101111101101", "b": "110101110101110",
    "c": "011100100100011", "d": "110101101101110", "e": "111100110100111", "f": "111100110100100",
    "g": "011100101101011", "h": "101101111101101", "i": "111010010010111", "j": "001001001101010",
    "k": "101101110101101", "l": "100100100100111", "m": "111111101101101", "n": "110101101101101",
    "o": "010101101101010", "p": "110101110100100", "q": "010101101110011", "r": "110101110101101",
    "s": "011100010001110", "t": "111010010010010", "u": "101101101101111", "v": "101101101101010",
    "w": "101101111111101", "x": "101101010101101", "y": "101101010010010", "z": "111001010100111",
    "+": "000010111010000", "-": "000000111000000", "@": "010101111100011", ".": "000000000000010",
    " ": "000000000000000", "%": "101001010100101", ":": "000010000010000", "(": "010100100100010",
    ")": "010001001001010", "/": "001001010100100", "_": "000000000000111", ",": "000000000010100",
}  # fmt: skip
_SYSTEM_ORDER = ("name-overlap", "base", "ep", "es", "ep+es", "fused")
_PALETTE = [(150, 150, 150), (90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        for y in range(max(0, y0), min(self.height, y1)):
            for x in range(max(0, x0), min(self.width, x1)):
                at = 3 * (y * self.width + x)
                self.pixels[at : at + 3] = bytes(color)

    def text(self, x: int, y: int, text: str, scale: int = 2, color: tuple[int, int, int] = (0, 0, 0)) -> None:
        for char in text.lower():
            glyph = _GLYPHS.get(char, _GLYPHS["_"])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    gx, gy = x + (i % 3) * scale, y + (i // 3) * scale
                    self.rect(gx, gy, gx + scale, gy + scale, color)
            x += 4 * scale

    def png(self) -> bytes:
        rows = b"".join(
            b"\x00" + bytes(self.pixels[3 * y * self.width : 3 * (y + 1) * self.width]) for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b"")
        )


def bar_chart_png(
    groups: Sequence[str], series: dict[str, Sequence[float]], *, title: str = "", bar: int = 8, gap: int = 14
) -> bytes:
    """A grouped bar chart of values in ``[0, 1]`` (drawn as 0-100) as PNG bytes.

    Args:
        groups: Group labels along the x axis (e.g. language codes).
        series: Series name -> one value per group (``nan`` draws nothing).
        title: Text above the chart.
        bar: Bar width in pixels.
        gap: Pixels between groups.
    """
    names = list(series)
    left, top, plot_h = 50, 40, 300
    width = left + len(groups) * (len(names) * bar + gap) + 20
    legend_h = 16 * len(names)
    canvas = _Canvas(max(width, 420), top + plot_h + 40 + legend_h)
    canvas.text(left, 10, title)
    for tick in range(0, 101, 20):
        y = top + plot_h - tick * plot_h // 100
        canvas.rect(left, y, width - 20, y + 1, (220, 220, 220))
        canvas.text(8, y - 5, f"{tick}")
    canvas.rect(left, top, left + 1, top + plot_h + 1, (0, 0, 0))
    canvas.rect(left, top + plot_h, width - 20, top + plot_h + 1, (0, 0, 0))
    for g, label in enumerate(groups):
        x0 = left + gap // 2 + g * (len(names) * bar + gap)
        for s, name in enumerate(names):
            value = series[name][g]
            if value == value:  # not NaN
                h = round(max(0.0, min(1.0, value)) * plot_h)
                x = x0 + s * bar
                canvas.rect(x, top + plot_h - h, x + bar - 1, top + plot_h, _PALETTE[s % len(_PALETTE)])
        canvas.text(x0, top + plot_h + 8, label)
    for s, name in enumerate(names):
        y = top + plot_h + 30 + 16 * s
        canvas.rect(left, y, left + 10, y + 10, _PALETTE[s % len(_PALETTE)])
        canvas.text(left + 16, y, name)
    return canvas.png()


def alignment_plot(results: dict[str, Any]) -> bytes:
    """Hits@1 per target language and system of :func:`.suite.evaluate_kg_adapters`'s results, as PNG bytes."""
    languages = list(results["alignment"])
    found = list(dict.fromkeys(s for per in results["alignment"].values() for s in per))
    systems = [s for s in _SYSTEM_ORDER if s in found] + [s for s in found if s not in _SYSTEM_ORDER]
    series = {
        s: [results["alignment"][lang].get(s, {}).get("hits@1", float("nan")) for lang in languages] for s in systems
    }
    return bar_chart_png(languages, series, title=f"entity alignment hits at 1 (%), {results['pivot']} to language")
