"""A corpus of odd input files, made at test time, each with the pixels a viewer shows or the skip it must get.

`write_corpus(root, outside)` writes the files and returns one `Odd` per case. Expected
pixels are RGBA arrays worked out here with numpy from how each file was made (colour
maths, orientation, animation compositing as browsers do it), not by running the
code under test.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, features

from tests.images import png_with_size


@dataclass(frozen=True)
class Odd:
    rel: str  # path below the corpus root, as the walk finds it
    frames: tuple[np.ndarray, ...] = ()  # expected RGBA (H, W, 4) uint8 per convert output, in order
    tol: int = 0  # largest difference per channel allowed (lossy formats, colour maths)
    skip: str = ""  # a fragment of the recorded skip reason, when the file must be skipped
    walk_skip: bool = False  # skipped by the folder walk itself (not a file Pillow ever sees)


def picture(width: int, height: int, seed: int, lo: int = 0, hi: int = 255) -> np.ndarray:
    """A smooth RGB picture, different for each seed, values in lo..hi (smooth: JPEG keeps it well)."""
    y, x = np.mgrid[0:height, 0:width]
    phase = seed * 0.7
    chans = [(np.sin(x / width * 3 + phase) + 1) / 2, (np.cos(y / height * 2.5 + phase) + 1) / 2,
             ((x + y) / (width + height) + seed * 0.13) % 1.0]
    return np.dstack([lo + (hi - lo) * c for c in chans]).round().astype(np.uint8)


def rgba(rgb: np.ndarray, alpha: np.ndarray | int = 255) -> np.ndarray:
    a = np.broadcast_to(np.asarray(alpha, np.uint8), rgb.shape[:2])
    return np.dstack([rgb, a]).astype(np.uint8)


def decoded(data: bytes) -> np.ndarray:
    """The stored pixels as a plain decoder gives them (EXIF and profiles ignored)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# --- colour maths: ICC profiles built by hand and what converting them to sRGB gives ---

D65, D50 = (0.3127, 0.3290), np.array([0.9642, 1.0, 0.8249])
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ADOBE_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
ADOBE_GAMMA = 563 / 256  # Adobe RGB (1998), as u8Fixed8 holds it
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def rgb_to_xyz(primaries, white=D65) -> np.ndarray:
    """Linear RGB -> XYZ matrix (white has Y = 1)."""
    def xyz(x: float, y: float) -> np.ndarray:
        return np.array([x / y, 1.0, (1 - x - y) / y])

    m = np.stack([xyz(*p) for p in primaries], axis=1)
    return m * np.linalg.solve(m, xyz(*white))


def srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0, 1)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def to_srgb(pixels: np.ndarray, primaries, decode) -> np.ndarray:
    """RGB pixels of a matrix/curve colour space as sRGB pixels (relative colorimetric, clipped)."""
    lin = decode(pixels / 255.0)
    m = np.linalg.solve(rgb_to_xyz(SRGB_PRIMARIES), rgb_to_xyz(primaries))
    return (srgb_encode(lin @ m.T) * 255).round().astype(np.uint8)


def _tag_xyz(v) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(struct.pack(">i", round(c * 65536)) for c in v)


def _tag_curve(gamma: float | None) -> bytes:
    """A gamma curve, or (None) the sRGB curve sampled at 1024 points."""
    if gamma is not None:
        return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    table = (srgb_decode(np.linspace(0, 1, 1024)) * 65535).round().astype(">u2")
    return b"curv\0\0\0\0" + struct.pack(">I", 1024) + table.tobytes()


def _tag_desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 78  # no Unicode, no ScriptCode


def icc_profile(description: str, primaries=None, gamma: float | None = None) -> bytes:
    """An ICC v2 display profile: RGB matrix/curves from `primaries` (D65 white), or grey when None."""
    tags = {b"desc": _tag_desc(description), b"cprt": b"text\0\0\0\0test\0", b"wtpt": _tag_xyz(D50)}
    if primaries is None:
        space, tags[b"kTRC"] = b"GRAY", _tag_curve(gamma)
    else:
        space = b"RGB "
        lms = _BRADFORD @ (rgb_to_xyz(primaries) @ np.ones(3))
        adapt = np.linalg.solve(_BRADFORD, np.diag((_BRADFORD @ D50) / lms) @ _BRADFORD)
        colorants = adapt @ rgb_to_xyz(primaries)  # ICC colorants are D50-adapted
        for i, c in enumerate("rgb"):
            tags[f"{c}XYZ".encode()] = _tag_xyz(colorants[:, i])
            tags[f"{c}TRC".encode()] = _tag_curve(gamma)
    table, body = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for sig, data in tags.items():
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", space, b"XYZ ") + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + b"".join(struct.pack(">i", round(c * 65536)) for c in D50)
              + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


# --- animations written chunk by chunk: partial frames, disposal and blending as chosen ---

NONE, BACKGROUND, PREVIOUS = 0, 1, 2  # APNG dispose_op; GIF disposal is these + 1


def composite(size: tuple[int, int], patches) -> tuple[np.ndarray, ...]:
    """What a browser shows for each frame. patches: (x, y, rgba patch, dispose, blend_over)."""
    w, h = size
    canvas, shown = np.zeros((h, w, 4)), []
    for x, y, patch, dispose, over in patches:
        saved = canvas.copy()
        ph, pw = patch.shape[:2]
        dst, src = canvas[y:y + ph, x:x + pw], patch / 255.0
        if over:  # straight-alpha "over"
            a = src[..., 3:] + dst[..., 3:] * (1 - src[..., 3:])
            rgb = (src[..., :3] * src[..., 3:] + dst[..., :3] * dst[..., 3:] * (1 - src[..., 3:])) / np.maximum(a, 1e-9)
            dst[...] = np.dstack([rgb, a])
        else:
            dst[...] = src
        shown.append((canvas * 255).round().astype(np.uint8))
        if dispose == BACKGROUND:
            canvas[y:y + ph, x:x + pw] = 0
        elif dispose == PREVIOUS:
            canvas = saved
    return tuple(shown)


def _gif_lzw(indices: np.ndarray) -> bytes:
    """Indices as GIF image data: 8-bit literals, a clear code before the code table needs 10 bits."""
    codes: list[int] = []
    flat = indices.ravel()
    for start in range(0, flat.size, 250):
        codes += [256, *map(int, flat[start:start + 250])]
    codes.append(257)
    bits = sum(c << (9 * i) for i, c in enumerate(codes))
    raw = bits.to_bytes((9 * len(codes) + 7) // 8, "little")
    return b"\x08" + b"".join(bytes([len(raw[i:i + 255])]) + raw[i:i + 255] for i in range(0, len(raw), 255)) + b"\0"


def gif_bytes(size, palette: np.ndarray, frames) -> bytes:
    """frames: (x, y, indices (H, W) uint8, GIF disposal 0-3, transparent index or None)."""
    out = [b"GIF89a", struct.pack("<HHBBB", *size, 0xF7, 0, 0), palette.astype(np.uint8).tobytes(),
           b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"]
    for x, y, idx, disposal, transparent in frames:
        flags = (disposal << 2) | (transparent is not None)
        out.append(struct.pack("<BBBBHBB", 0x21, 0xF9, 4, flags, 10, transparent or 0, 0))
        out.append(struct.pack("<BHHHHB", 0x2C, x, y, idx.shape[1], idx.shape[0], 0) + _gif_lzw(idx))
    return b"".join(out) + b"\x3b"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def apng_bytes(size, frames, colour_type: int = 6, cover: np.ndarray | None = None) -> bytes:
    """frames: (x, y, pixels (H, W, C), dispose_op, blend_op); `cover`: a default image outside the animation."""
    def data(px: np.ndarray) -> bytes:
        return zlib.compress(b"".join(b"\0" + row.tobytes() for row in px))

    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", *size, 8, colour_type, 0, 0, 0)),
           _chunk(b"acTL", struct.pack(">II", len(frames), 0))]
    seq = 0
    if cover is not None:
        out.append(_chunk(b"IDAT", data(cover)))
    for i, (x, y, px, dispose, blend) in enumerate(frames):
        control = struct.pack(">IIIIIHHBB", seq, px.shape[1], px.shape[0], x, y, 1, 10, dispose, blend)
        out.append(_chunk(b"fcTL", control))
        seq += 1
        if i == 0 and cover is None:
            out.append(_chunk(b"IDAT", data(px)))
        else:
            out.append(_chunk(b"fdAT", struct.pack(">I", seq) + data(px)))
            seq += 1
    return b"".join(out) + _chunk(b"IEND", b"")


# --- JPEG surgery ---

def jpeg_without_app14(data: bytes) -> bytes:
    """The JPEG with its Adobe (APP14) segment removed."""
    out, i = bytearray(data[:2]), 2
    while data[i:i + 2] != b"\xff\xda":  # up to the start of scan
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if data[i:i + 2] != b"\xff\xee":
            out += data[i:i + 2 + length]
        i += 2 + length
    return bytes(out + data[i:])


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header claiming another size (a decompression-bomb shape)."""
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


# --- the corpus ---

class _Corpus:
    def __init__(self, root: Path):
        self.root, self.cases = root, []

    def write(self, rel: str, data: bytes, *frames: np.ndarray, tol: int = 0, skip: str = "",
              walk_skip: bool = False) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.cases.append(Odd(rel, tuple(frames), tol, skip, walk_skip))

    def walk_skip(self, rel: str, skip: str) -> None:
        self.cases.append(Odd(rel, skip=skip, walk_skip=True))


def _orientation(c: _Corpus) -> None:
    """Stored sideways with an EXIF orientation: the pixels must come out upright."""
    undo = {2: np.fliplr, 3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: np.rot90}
    for k, (orientation, fmt, ext) in enumerate([(6, "JPEG", "jpg"), (8, "JPEG", "jpg"), (3, "JPEG", "jpg"),
                                                 (2, "JPEG", "jpg"), (8, "PNG", "png"), (6, "WEBP", "webp")]):
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
        data = encode(Image.fromarray(picture(48, 32, seed=k)), fmt, exif=exif, **kw)
        c.write(f"exif/orientation{orientation}.{ext}", data, rgba(undo[orientation](decoded(data))))


def _cmyk(c: _Corpus) -> None:
    """CMYK JPEGs: Photoshop's (Adobe marker, inverted values) and plain ones (no marker)."""
    cmyk = np.dstack([picture(40, 30, seed=20), picture(40, 30, seed=21)[..., :1] // 3])
    rgb = ((255 - cmyk[..., :3].astype(int)) * (255 - cmyk[..., 3:].astype(int)) / 255).round()
    adobe = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100)
    assert b"Adobe" in adobe[:200]  # Pillow writes Adobe's inverted CMYK, as Photoshop does
    c.write("cmyk/adobe.jpg", adobe, rgba(rgb), tol=6)
    # Without the marker the values are stored as they are: invert what Pillow inverts on save.
    plain = jpeg_without_app14(encode(ImageChops.invert(Image.fromarray(cmyk, "CMYK")), "JPEG", quality=100))
    c.write("cmyk/plain.jpg", plain, rgba(rgb), tol=6)


def _modes(c: _Corpus) -> None:
    """16-bit, grey with alpha, palette with alpha per entry, transparency keys (tRNS)."""
    grey = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    grey8 = ((grey.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    c.write("modes/grey16.png", encode(Image.fromarray(grey), "PNG"), rgba(np.dstack([grey8] * 3)))
    c.write("modes/grey16_trns.png", encode(Image.fromarray(grey), "PNG", transparency=int(grey[3, 5])),
            rgba(np.dstack([grey8] * 3), np.where(grey == grey[3, 5], 0, 255)))
    rgb48 = np.minimum(picture(20, 10, seed=22).astype(int) * 257 + (np.arange(20) * 9)[:, None], 65535)
    png48 = b"".join([b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", 20, 10, 16, 2, 0, 0, 0)),
                      _chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r.astype(">u2").tobytes() for r in rgb48))),
                      _chunk(b"IEND", b"")])
    c.write("modes/rgb48.png", png48, rgba((rgb48 / 257).round()), tol=1)
    la = picture(30, 20, seed=23)
    alpha = np.tile(np.linspace(0, 255, 30).astype(np.uint8), (20, 1))
    c.write("modes/la.png", encode(Image.fromarray(np.dstack([la[..., 0], alpha]), "LA"), "PNG"),
            rgba(np.dstack([la[..., 0]] * 3), alpha))
    palette = picture(16, 1, seed=24)[0]
    idx = (np.arange(24 * 12).reshape(12, 24) % 16).astype(np.uint8)
    trns = bytes([0, 128, 255, 64] + [255] * 12)
    pal = Image.fromarray(idx, "P")
    pal.putpalette(palette.ravel().tolist())
    c.write("modes/palette_trns.png", encode(pal, "PNG", transparency=trns),
            rgba(palette[idx], np.frombuffer(trns, np.uint8)[idx]))
    rgb = picture(20, 20, seed=25)
    key = tuple(int(v) for v in rgb[4, 7])
    c.write("modes/rgb_trns.png", encode(Image.fromarray(rgb), "PNG", transparency=key),
            rgba(rgb, np.where((rgb == key).all(axis=2), 0, 255)))


def _icc(c: _Corpus) -> None:
    """Colour-managed pictures: converted into sRGB as the embedded profile says."""
    px = picture(32, 16, seed=30, lo=40, hi=210)  # inside sRGB's gamut from P3 and Adobe RGB
    p3, adobe = icc_profile("Display P3", P3_PRIMARIES), icc_profile("Adobe RGB", ADOBE_PRIMARIES, ADOBE_GAMMA)
    p3_srgb = to_srgb(px, P3_PRIMARIES, srgb_decode)
    c.write("icc/display_p3.png", encode(Image.fromarray(px), "PNG", icc_profile=p3), rgba(p3_srgb), tol=1)
    alpha = np.tile(np.linspace(30, 255, 32).astype(np.uint8), (16, 1))
    c.write("icc/display_p3_rgba.png", encode(Image.fromarray(rgba(px, alpha)), "PNG", icc_profile=p3),
            rgba(p3_srgb, alpha), tol=1)
    data = encode(Image.fromarray(px), "JPEG", quality=95, icc_profile=adobe)
    c.write("icc/adobe_rgb.jpg", data, rgba(to_srgb(decoded(data), ADOBE_PRIMARIES, lambda v: v ** ADOBE_GAMMA)), tol=1)
    pal = Image.fromarray(px).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    c.write("icc/display_p3_palette.png", encode(pal, "PNG", icc_profile=p3),
            rgba(to_srgb(np.asarray(pal.convert("RGB")), P3_PRIMARIES, srgb_decode)), tol=1)
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (4, 1))
    linear = (srgb_encode(grey / 255.0) * 255).round().astype(np.uint8)  # a linear grey profile (gamma 1.0)
    c.write("icc/grey_linear.png", encode(Image.fromarray(grey), "PNG", icc_profile=icc_profile("Grey", None, 1.0)),
            rgba(np.dstack([linear] * 3)), tol=1)
    # Broken profiles: the pixels as they are, never a crash.
    for k, (name, icc) in enumerate([("broken", b"not a profile" * 20), ("truncated", p3[:200]),
                                     ("grey_profile_on_rgb", icc_profile("Grey", None, 1.0))]):
        plain = picture(32, 16, seed=31 + k)
        c.write(f"icc/{name}.png", encode(Image.fromarray(plain), "PNG", icc_profile=icc), rgba(plain))



def _gif(c: _Corpus) -> None:
    """Partial frames with every disposal; a transparent index; a first frame smaller than the screen."""
    palette = np.zeros((256, 3), np.uint8)
    palette[:200] = picture(200, 1, seed=40)[0]

    def patch(h: int, w: int, first: int, transparent: int | None = None):
        idx = (first + np.arange(h * w).reshape(h, w) % 7).astype(np.uint8)
        if transparent is not None:
            idx[0, 0] = transparent
        alpha = np.where(idx == transparent, 0, 255) if transparent is not None else 255
        return idx, rgba(palette[idx], alpha)

    frames = [(0, 0, *patch(12, 16, 10), 1, None), (3, 2, *patch(4, 5, 30, 199), 2, 199),  # then clear to background
              (8, 6, *patch(5, 6, 50), 3, None), (1, 1, *patch(3, 3, 70), 1, None)]  # then restore previous
    data = gif_bytes((16, 12), palette, [(x, y, idx, d, t) for x, y, idx, _, d, t in frames])
    c.write("anim/disposal.gif", data, *composite((16, 12), [(x, y, p, d - 1 if d else 0, True)
                                                          for x, y, _, p, d, t in frames]))
    small = [(2, 2, *patch(6, 8, 90), 1, None), (0, 0, *patch(12, 16, 110), 1, None)]
    data = gif_bytes((16, 12), palette, [(x, y, idx, d, t) for x, y, idx, _, d, t in small])
    c.write("anim/small_first_frame.gif", data,
            *composite((16, 12), [(x, y, p, 0, True) for x, y, _, p, _, _ in small]))


def _apng(c: _Corpus) -> None:
    """APNG: partial frames, every dispose_op, blending over semi-transparent pixels; RGB; a cover image."""
    base = rgba(picture(16, 12, seed=50))
    half = rgba(picture(4, 3, seed=51), 128)
    hole = rgba(picture(5, 4, seed=52))
    hole[1, 1, 3] = 0
    frames = [(0, 0, base, NONE, 0), (2, 3, hole, BACKGROUND, 1), (9, 1, rgba(picture(6, 5, seed=53)), PREVIOUS, 0),
              (6, 6, half, NONE, 1)]
    c.write("anim/blend.apng", apng_bytes((16, 12), frames),
            *composite((16, 12), [(x, y, p, d, b == 1) for x, y, p, d, b in frames]), tol=1)
    rgb = [(0, 0, picture(16, 12, seed=55), BACKGROUND, 0), (4, 4, hole[..., :3], NONE, 0)]  # no alpha in the file
    shown = composite((16, 12), [(x, y, rgba(p), d, False) for x, y, p, d, _ in rgb])
    c.write("anim/rgb.apng", apng_bytes((16, 12), rgb, colour_type=2), *shown)
    covered = [(0, 0, hole, NONE, 0), (1, 1, rgba(picture(3, 2, seed=54)), NONE, 1)]
    c.write("anim/cover.apng", apng_bytes((5, 4), covered, cover=base[:4, :5]),
            *composite((5, 4), [(x, y, p, d, b == 1) for x, y, p, d, b in covered]))


def _webp_avif_mpo(c: _Corpus) -> None:
    frames = [rgba(picture(20, 14, seed=60 + k), 255) for k in range(3)]
    frames[1][2:5, 3:9, 3] = 0
    frames[1][2:5, 3:9, :3] = 0  # lossless WebP may drop the colour under alpha 0: make it black
    ims = [Image.fromarray(f) for f in frames]
    c.write("anim/anim.webp", encode(ims[0], "WEBP", save_all=True, append_images=ims[1:], lossless=True), *frames)
    px = picture(32, 24, seed=61)
    if features.check("avif"):  # Pillow without AVIF cannot make one (ingest's skip for it: test_craft_images)
        c.write("avif/pic.avif", encode(Image.fromarray(px), "AVIF", quality=100, subsampling="4:4:4"), rgba(px), tol=4)
    # A phone's JPEG: the picture, then a gain map (MPO); only the picture is a picture.
    primary = encode(Image.fromarray(picture(32, 24, seed=63)), "JPEG", quality=95)
    gain = Image.fromarray(picture(8, 6, seed=62)[..., 0])
    mpo = encode(Image.open(io.BytesIO(primary)), "MPO", save_all=True, append_images=[gain], quality=95)
    with Image.open(io.BytesIO(mpo)) as im:
        assert im.format == "MPO" and im.n_frames == 2
        first = np.asarray(im.convert("RGB"))
    c.write("mpo/gain_map.jpg", mpo, rgba(first))


def _names(c: _Corpus) -> None:
    """Wrong extensions and names beyond ASCII."""
    png = encode(Image.fromarray(picture(12, 10, seed=70)), "PNG")
    c.write("ext/png_named.jpg", png, rgba(picture(12, 10, seed=70)))
    jpg = encode(Image.fromarray(picture(12, 10, seed=71)), "JPEG", quality=90)
    c.write("ext/jpeg_named.png", jpg, rgba(decoded(jpg)))
    for k, name in enumerate(["unicode/café crème.png", "unicode/名前 テスト.png", "unicode/emoji 🎨🖌️.png",
                              "unicode/e\u0301cole (NFD).png", "unicode/ spaces  around .png"]):
        px = picture(10, 8, seed=72 + k)
        c.write(name, encode(Image.fromarray(px), "PNG"), rgba(px))
    latin1 = os.fsdecode(b"unicode/latin1-\xe9t\xe9.png")  # not UTF-8: the name cannot be stored
    c.write(latin1, encode(Image.fromarray(picture(10, 8, seed=80)), "PNG"), skip="not valid UTF-8", walk_skip=True)


def _bombs_and_unreadable(c: _Corpus) -> None:
    c.write("bomb/huge.png", png_with_size(40_000, 40_000), skip="decompression bomb")
    dot = [(0, 0, np.zeros((1, 1), np.uint8), 0, None)]
    c.write("bomb/huge.gif", gif_bytes((65_000, 65_000), np.zeros((256, 3)), dot), skip="decompression bomb")
    small = encode(Image.fromarray(picture(16, 16, seed=90)), "JPEG")
    c.write("bomb/huge.jpg", jpeg_with_size(small, 60_000, 60_000), skip="decompression bomb")
    c.write("bad/empty.png", b"", skip="empty file")
    os.mkfifo(c.root / "bad/fifo.png")  # reading it would wait for ever
    c.walk_skip("bad/fifo.png", "not a regular file")
    (c.root / "bad/folder.png").mkdir()
    c.walk_skip("bad/folder.png", "a folder")
    px = picture(10, 10, seed=91)
    c.write("bad/folder.png/inside.png", encode(Image.fromarray(px), "PNG"), rgba(px))
    os.symlink("missing.png", c.root / "bad/broken_link.png")
    c.walk_skip("bad/broken_link.png", "broken link")
    os.symlink("self_link.png", c.root / "bad/self_link.png")
    c.walk_skip("bad/self_link.png", "symlink loop")


def _links(c: _Corpus, outside: Path) -> None:
    """Links out of the folder are followed once; links back into it are loops or already walked."""
    (outside / "folder").mkdir(parents=True)
    px = picture(10, 10, seed=95)
    (outside / "folder/elsewhere.png").write_bytes(encode(Image.fromarray(px), "PNG"))
    (c.root / "links").mkdir()
    os.symlink(outside / "folder", c.root / "links/outside", target_is_directory=True)
    c.cases.append(Odd("links/outside/elsewhere.png", (rgba(px),)))
    os.symlink(outside / "folder", c.root / "links/outside_again", target_is_directory=True)
    c.walk_skip("links/outside_again", "already walked")
    (c.root / "links/sub").mkdir()
    os.symlink("..", c.root / "links/sub/up", target_is_directory=True)
    c.walk_skip("links/sub/up", "symlink loop")
    os.symlink(c.root, c.root / "links/to_root", target_is_directory=True)
    c.walk_skip("links/to_root", "symlink loop")
    os.symlink("../bad", c.root / "links/to_bad", target_is_directory=True)
    c.walk_skip("links/to_bad", "inside the source folder")
    file_px = picture(10, 10, seed=96)
    (outside / "file.png").write_bytes(encode(Image.fromarray(file_px), "PNG"))
    os.symlink(outside / "file.png", c.root / "links/file_link.png")
    c.cases.append(Odd("links/file_link.png", (rgba(file_px),)))


def write_corpus(root: Path, outside: Path) -> list[Odd]:
    """Every odd case below `root`; `outside` (not below root) holds what links point out to."""
    c = _Corpus(root)
    root.mkdir(parents=True, exist_ok=True)
    for group in (_orientation, _cmyk, _modes, _icc, _gif, _apng, _webp_avif_mpo, _names, _bombs_and_unreadable):
        group(c)
    _links(c, outside)
    return c.cases
