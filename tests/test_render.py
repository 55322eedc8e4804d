"""The typographic renderer: deterministic pixels, the character grid, and the reader's patch targets."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lensiar.render import GRID, cells, fits, layout, render_phrase, render_steps, steps_text


def digest(image: object) -> str:
    return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()


def test_same_text_same_pixels_and_different_text_different_pixels() -> None:
    assert digest(render_phrase("make a cake")) == digest(render_phrase("make a cake"))
    assert digest(render_phrase("make a cake")) != digest(render_phrase("make a pie"))
    steps = np.asarray(render_steps("Steps to bake bread."))
    assert steps.shape == (GRID.size, GRID.size, 3) and steps.min() < 50  # ink on the page


def test_words_start_on_even_columns_and_wrap() -> None:
    lines = layout("how to bake a loaf of sourdough bread at home")
    assert all(col % 2 == 0 for line in lines for col, _ in line)
    assert all(col + len(word) <= GRID.cols for line in lines for col, word in line)
    grid = cells(lines)
    assert "".join(grid[0]).split() == [w for _, w in lines[0]]
    # the list lines of the FigStep style come last, one per item
    assert [line[0][1] for line in steps_text("Steps to bake bread.")[-3:]] == ["1.", "2.", "3."]


def test_glyphs_sit_inside_their_cells() -> None:
    """Each character is drawn inside its own cell: a one-letter text inks only its first cell."""
    ink = np.asarray(render_phrase("W").convert("L")) < 128
    assert ink[: GRID.cell_h, : GRID.cell_w].any() and not ink[:, GRID.cell_w :].any()
    assert not ink[GRID.cell_h :, :].any()


def test_bad_text_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="empty"):
        render_phrase("  ")
    with pytest.raises(ValueError, match="lines"):
        render_phrase("word " * 80)
    assert not fits("word " * 80) and fits("make a cake") and not fits("a " * 50, "steps")
