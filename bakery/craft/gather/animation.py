"""Animation frames as a browser shows them (GIF and APNG).

A GIF or APNG frame is often a patch: a rectangle drawn over what the previous frame
left, after that frame was disposed of (kept, cleared to transparent, or restored to
what was there before it). Pillow gets the patches right but disposes to an opaque
colour where browsers show transparency, and blends semi-transparent APNG pixels
with the wrong alpha; so each patch is decoded on its own here (Pillow, from a
one-frame file cut out of the animation) and the frames are composited on an RGBA
canvas by the specs (GIF89a, APNG).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

NONE, BACKGROUND, PREVIOUS = 0, 1, 2  # APNG's dispose_op values; GIF's disposal methods map onto them


@dataclass(frozen=True)
class Patch:
    x: int
    y: int
    dispose: int  # what happens to the patch's rectangle after the frame is shown
    over: bool  # blend onto the canvas (True) or replace what is there (False)
    file: bytes  # a one-frame GIF or PNG holding the patch's pixels


def _gif_sub_blocks_end(data: bytes, pos: int) -> int:
    while data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _colour_table_size(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _gif_patch(head: bytes, control: bytes, image: bytes) -> Patch:
    """A one-frame GIF of the image's own size: the screen shrunk to it, the image moved to 0, 0."""
    x, y, width, height = struct.unpack("<HHHH", image[1:9])
    disposal = (control[3] >> 2) & 7 if control else 0
    screen = head[:6] + struct.pack("<HH", width, height) + head[10:]
    file = screen + control + image[:1] + struct.pack("<HH", 0, 0) + image[5:] + b"\x3b"
    return Patch(x, y, {2: BACKGROUND, 3: PREVIOUS}.get(disposal, NONE), True, file)


def gif_patches(data: bytes) -> tuple[tuple[int, int], list[Patch]]:
    """The screen size and every frame's patch."""
    try:
        pos = 13 + _colour_table_size(data[10])
        head, control, patches = data[:pos], b"", []
        while data[pos] != 0x3B:  # trailer
            if data[pos] == 0x21:  # extension: keep the graphic control one for the next image
                end = _gif_sub_blocks_end(data, pos + 2)
                control = data[pos:end] if data[pos + 1] == 0xF9 else control
            elif data[pos] == 0x2C:  # image: descriptor, local colour table, LZW data
                end = _gif_sub_blocks_end(data, pos + 11 + _colour_table_size(data[pos + 9]))
                patches.append(_gif_patch(head, control, data[pos:end]))
                control = b""
            else:
                break  # not a block: browsers stop here too
            pos = end
    except IndexError:
        raise ValueError("GIF block structure runs past the end of the file") from None
    return struct.unpack("<HH", data[6:10]), patches


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def apng_patches(data: bytes) -> tuple[tuple[int, int], list[Patch]]:
    """The canvas size and every animation frame's patch, each as a PNG of its own.

    The default image is left out unless it is the first frame: browsers never show it.
    """
    ihdr, shared, frames = b"", [], []  # frames: [fcTL body, data chunks]
    for kind, body in _png_chunks(data):
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"fcTL":
            frames.append([body, []])
        elif kind in (b"IDAT", b"fdAT"):
            if frames:  # IDAT before any fcTL is the default image alone
                frames[-1][1].append(body if kind == b"IDAT" else body[4:])
        elif kind == b"IEND":
            break
        elif not frames and kind != b"acTL":
            shared.append(_png_chunk(kind, body))  # PLTE, tRNS, iCCP...: they apply to every frame
    if len(ihdr) != 13:
        raise ValueError("PNG without a header")
    patches = []
    for control, chunks in frames:
        width, height, x, y = struct.unpack(">IIII", control[4:20])
        dispose, blend = control[24], control[25]
        header = _png_chunk(b"IHDR", struct.pack(">II", width, height) + ihdr[8:])
        png = b"\x89PNG\r\n\x1a\n" + header + b"".join(shared)
        png += b"".join(_png_chunk(b"IDAT", c) for c in chunks) + _png_chunk(b"IEND", b"")
        patches.append(Patch(x, y, dispose if dispose in (BACKGROUND, PREVIOUS) else NONE, blend == 1, png))
    return struct.unpack(">II", ihdr[:8]), patches


def _draw(canvas: Image.Image, patch: Patch) -> tuple[int, int, int, int]:
    """Draw the patch on the canvas; returns the box it covers (clipped to the canvas)."""
    with Image.open(BytesIO(patch.file)) as im:
        pixels = im.convert("RGBA")
    box = (patch.x, patch.y, min(patch.x + pixels.width, canvas.width), min(patch.y + pixels.height, canvas.height))
    if box[2] > box[0] and box[3] > box[1]:  # a patch off the canvas draws nothing
        pixels = pixels.crop((0, 0, box[2] - box[0], box[3] - box[1]))
        if patch.over:
            canvas.alpha_composite(pixels, box[:2])
        else:
            canvas.paste(pixels, box[:2])
    return box


def composite(size: tuple[int, int], patches: list[Patch]) -> Iterator[Image.Image]:
    """Each frame as shown: RGBA where something is transparent, else RGB."""
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))  # browsers start from transparent, never the GIF background
    for patch in patches:
        saved = canvas.copy() if patch.dispose == PREVIOUS else None
        box = _draw(canvas, patch)
        opaque = canvas.getchannel("A").getextrema()[0] == 255
        yield canvas.convert("RGB") if opaque else canvas.copy()
        if patch.dispose == BACKGROUND and box[2] > box[0] and box[3] > box[1]:
            canvas.paste((0, 0, 0, 0), box)
        elif saved is not None:
            canvas = saved
