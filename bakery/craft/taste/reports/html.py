"""What every section of the evaluation report is made with: escaped text, PNG figures as data URIs."""

from __future__ import annotations

import base64
import html
import io


def esc(x: object) -> str:
    return html.escape(str(x))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fig_png(fig) -> bytes:  # a matplotlib Figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()
