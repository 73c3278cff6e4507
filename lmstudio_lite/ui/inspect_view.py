"""Pure formatters for the Inspect tab and the Chat tab's probability colours: plain data from
``tasks/inspect.py`` in, Markdown, HTML and HighlightedText values out. No widgets, no torch.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np

from .i18n import tr

AVERAGE = "average of all heads"


def pct(p: float) -> str:
    return f"{100 * p:.1f}%" if p >= 0.001 else f"{100 * p:.2g}%"


def shown(piece: str) -> str:
    """A token piece readable on its own: spaces, newlines and tabs drawn as visible marks."""
    return piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def chips(analysis) -> list[tuple[str, str]]:
    """HighlightedText value: each token with its id and byte length as its (coloured) label."""
    return [(shown(p.text), f"#{p.id} · {p.nbytes}B") for p in analysis.positions]


def summary_md(analysis, lang: str | None = None) -> str:
    head = tr(lang, "inspect.summary", n=len(analysis.ids), chars=len(analysis.text),
              bytes=sum(p.nbytes for p in analysis.positions))
    ce = analysis.cross_entropy
    if ce is None:
        return head + tr(lang, "inspect.one_token")
    return head + tr(lang, "inspect.scores", ce=f"{ce:.3f}", bits=f"{ce / np.log(2):.2f}",
                     ppl=f"{analysis.perplexity:.2f}", choices=f"{analysis.perplexity:.1f}")


def position_md(analysis, index: int, lang: str | None = None) -> str:
    p = analysis.positions[index]
    head = tr(lang, "inspect.position_head_one" if p.nbytes == 1 else "inspect.position_head", index=index,
              token=shown(p.text), id=p.id, nbytes=p.nbytes)
    if p.next_id is None:
        return head + tr(lang, "inspect.text_ends")
    nxt = analysis.positions[index + 1]
    return head + tr(lang, "inspect.next", token=shown(nxt.text), prob=pct(p.next_prob), rank=p.next_rank,
                     bits=f"{p.surprise_bits:.2f}")


def candidate_choices(analysis, index: int, lang: str | None = None) -> list[tuple[str, str]]:
    """Radio choices for the top candidates after ``index``: label, value = the token id."""
    p = analysis.positions[index]
    return [(f"{shown(c.text)}  {pct(c.prob)}" + (tr(lang, "inspect.in_text") if c.id == p.next_id else ""), str(c.id))
            for c in p.top]


def branch_md(prefix: str, continuation: str, lang: str | None = None) -> str:
    """The text up to the branch point, then the chosen token's continuation highlighted."""
    return (f"<div class='branch'><b>{tr(lang, 'inspect.what_if')}</b> {html.escape(prefix[-300:])}"
            f"<mark>{html.escape(continuation)}</mark></div>")


def _rgb(value: float) -> tuple[int, int, int]:
    """0 -> white, 1 -> deep blue."""
    v = min(1.0, max(0.0, value))
    return (int(255 - 225 * v), int(255 - 190 * v), int(255 - 75 * v))


def heatmap_html(weights: list[list[float]], pieces: list[str], title: str, lang: str | None = None) -> str:
    """Attention [query][key] as an image (square-root scale, so small weights show) with the
    tokens on both axes: queries down the left, keys across the top."""
    w = np.sqrt(np.clip(np.asarray(weights, dtype=np.float32), 0.0, 1.0))
    n = len(pieces)
    cell = max(12, min(28, 720 // max(1, n)))
    rgb = np.stack([255 - 225 * w, 255 - 190 * w, 255 - 75 * w], axis=-1).astype(np.uint8)
    from PIL import Image  # gradio's own dependency; only drawn on request

    img = Image.fromarray(rgb, "RGB").resize((n * cell, n * cell), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    src = base64.b64encode(buf.getvalue()).decode()
    font = f"font-size:{min(12, cell - 2)}px;line-height:{cell}px;height:{cell}px"
    cols = "".join(f"<div class='hm-col' title='{html.escape(p)}' style='width:{cell}px'>{html.escape(shown(p))}"
                   "</div>" for p in pieces)
    rows = "".join(f"<div class='hm-row' title='{html.escape(p)}' style='{font}'>{html.escape(shown(p))}</div>"
                   for p in pieces)
    return (f"<style>{CSS}</style><div class='heatmap'><div class='hm-title'>{html.escape(title)}</div>"
            f"<div style='overflow:auto;max-height:820px'><div style='display:grid;"
            f"grid-template-columns:max-content {n * cell}px'>"
            f"<div></div><div class='hm-cols' style='display:flex;font-size:{min(12, cell - 2)}px'>{cols}</div>"
            f"<div class='hm-rows' style='text-align:right;padding-right:4px'>{rows}</div>"
            f"<img alt='attention heatmap' src='data:image/png;base64,{src}' width='{n * cell}' "
            f"height='{n * cell}' style='image-rendering:pixelated;max-width:none'></div></div>"
            f"<div class='hm-legend'>{tr(lang, 'inspect.heatmap_legend')}</div></div>")


def lens_html(analysis, lens, lang: str | None = None) -> str:
    """The logit lens ``lens[layer][position]``: for each position (rows) each layer's top next
    token (columns), shaded by its probability; the last layer is the model's own prediction."""
    layers = len(lens)
    head = "".join(f"<th>L{i}</th>" for i in range(layers))
    body = []
    for i, pos in enumerate(analysis.positions):
        cells = []
        for layer in range(layers):
            c = lens[layer][i]
            r, g, b = _rgb(c.prob)
            ink = "#fff" if c.prob > 0.6 else "#111"
            mark = " lens-hit" if c.id == pos.next_id else ""
            cells.append(f"<td class='lens-cell{mark}' style='background:rgb({r},{g},{b});color:{ink}' "
                         f"title='{pct(c.prob)}'>{html.escape(shown(c.text))}</td>")
        nxt = analysis.positions[i + 1].text if i + 1 < len(analysis.positions) else ""
        body.append(f"<tr><th>{i}</th><td class='lens-in'>{html.escape(shown(pos.text))}</td>{''.join(cells)}"
                    f"<td class='lens-in'>{html.escape(shown(nxt))}</td></tr>")
    return (f"<style>{CSS}</style><div class='lens' style='overflow:auto;max-height:600px'><table class='lens-table'>"
            f"<tr><th>#</th><th>{tr(lang, 'inspect.lens_token')}</th>{head}<th>{tr(lang, 'inspect.lens_next')}</th>"
            f"</tr>{''.join(body)}</table><div class='hm-legend'>{tr(lang, 'inspect.lens_legend')}</div></div>")


def reply_html(tokens, lang: str | None = None) -> str:
    """A chat reply with each piece's background by its probability (red unlikely, green likely);
    hovering shows the probability and the alternatives."""
    if not tokens:
        return f"<div class='reply-probs'>{tr(lang, 'inspect.no_reply')}</div>"
    spans = []
    for t in tokens:
        hue = int(120 * t.prob)  # 0 red .. 120 green
        alts = ", ".join(f"{shown(a.text)} {pct(a.prob)}" for a in t.alternatives)
        tip = html.escape(tr(lang, "inspect.alternatives", prob=pct(t.prob), alts=alts), quote=True)
        text = html.escape(t.text).replace("\n", "<br>")
        spans.append(f"<span class='tok' style='background:hsl({hue},80%,82%)' title=\"{tip}\" "
                     f"data-prob='{t.prob:.4f}'>{text}</span>")
    return (f"<style>{CSS}</style><div class='reply-probs'><div class='hm-legend'>{tr(lang, 'inspect.reply_legend')}"
            f"</div>{''.join(spans)}</div>")


CSS = """
.hm-col { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; overflow: hidden;
          max-height: 90px; text-align: left; }
.hm-row { white-space: nowrap; overflow: hidden; max-width: 160px; }
.hm-legend { font-size: 0.8em; opacity: 0.8; margin: 4px 0; }
.hm-title { font-weight: 600; margin-bottom: 4px; }
.lens-table { border-collapse: collapse; font-size: 0.8em; }
.lens-table td, .lens-table th { border: 1px solid #ddd; padding: 1px 4px; white-space: nowrap; }
.lens-hit { font-weight: 700; text-decoration: underline; }
.reply-probs .tok { border-radius: 3px; padding: 0 1px; color: #111; }
"""
