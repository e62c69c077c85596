"""The demo's image grid, labelled so that it reads without the docs: one row per model, one column group per
kind of prompt (each prompt's samples side by side, the prompt written above them)."""

from __future__ import annotations

from typing import Any

PAD = 6  # pixels around labels, and between column groups
INK = (0, 0, 0)
PAPER = (255, 255, 255)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow ≥ 10.1 with FreeType: a scalable default font
    except TypeError:
        return ImageFont.load_default()


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` where its words allow (a word wider than that stands alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_size(draw, f"{lines[-1]} {word}", font)[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def labelled_grid(rows: list[tuple[str, list[Any]]], groups: list[tuple[str, list[str]]], *, per_prompt: int,
                  scale: int = 3) -> Any:
    """A PIL image: each of ``rows`` is (label, images), the images in the order of ``groups``, each group
    (label, prompts) holding ``per_prompt`` images of each of its prompts. Cells are the images enlarged
    ``scale`` times (nearest neighbour); row labels on the left, group and prompt labels above."""
    from PIL import Image, ImageDraw

    columns = sum(len(prompts) for _, prompts in groups) * per_prompt
    for label, images in rows:
        if len(images) != columns:
            raise ValueError(f"row '{label}' has {len(images)} images for {columns} columns")
    cell = rows[0][1][0].size[0] * scale
    big, small = _font(14), _font(11)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(_text_size(measure, label, big)[0] for label, _ in rows) + 2 * PAD
    group_h = max(_text_size(measure, label, big)[1] for label, _ in groups)
    line_h = _text_size(measure, "Ag", small)[1] + 2
    prompt_lines = max(len(wrap(measure, p, small, per_prompt * cell - PAD)) for _, prompts in groups for p in prompts)
    top = group_h + prompt_lines * line_h + 3 * PAD
    width = left + columns * cell + (len(groups) - 1) * PAD
    sheet = Image.new("RGB", (width, top + len(rows) * cell), PAPER)
    draw = ImageDraw.Draw(sheet)

    def centred(text: str, font: Any, x0: int, x1: int, y: int) -> None:
        w, _ = _text_size(draw, text, font)
        draw.text((x0 + max(0, (x1 - x0 - w) // 2), y), text, fill=INK, font=font)

    x = left
    starts: list[int] = []  # the left edge of every column
    for label, prompts in groups:
        group_start = x
        for prompt in prompts:
            for i, line in enumerate(wrap(draw, prompt, small, per_prompt * cell - PAD)):
                centred(line, small, x, x + per_prompt * cell, group_h + 2 * PAD + i * line_h)
            for _ in range(per_prompt):
                starts.append(x)
                x += cell
        centred(label, big, group_start, x, PAD)
        draw.line([(group_start, group_h + 2 * PAD - 2), (x - 1, group_h + 2 * PAD - 2)], fill=INK)
        x += PAD
    for r, (label, images) in enumerate(rows):
        y = top + r * cell
        _, h = _text_size(draw, label, big)
        draw.text((PAD, y + (cell - h) // 2), label, fill=INK, font=big)
        for image, x0 in zip(images, starts, strict=True):
            sheet.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x0, y))
    return sheet
