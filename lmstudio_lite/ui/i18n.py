"""The page in English and Simplified Chinese, with Gradio's own i18n (``gr.I18n``).

Strings live in ``locales/<lang>.json`` (flat ``"area.name": "text"``); en.json holds every key.
Two ways to use a string, chosen by *when* it is made:

- ``t("key")`` for text fixed when the page is built (labels, info, placeholders, button values,
  choices, tab and accordion names, a Markdown's first value). It is a ``gr.I18n`` marker: the
  browser translates it in its current language and again whenever the language changes.
- ``tr(lang, "key", **params)`` for text a handler builds (notices, toasts, status lines), with
  ``lang = lang_of(request)``. Gradio translates neither toasts nor ``{params}``, so these are
  translated here, in the language of the request.
- ``say(lang, value)`` for what a service returned or raised: a ``messages.Message`` (English text
  that keeps its key and parameters) is said again in ``lang``; any other text is shown as it is.

The browser picks its language (``navigator.language``: zh, zh-CN, zh-SG, zh-Hans -> Chinese); the
switch at the top of the page (``build_switch``, ``wire_switch``) changes it in place and remembers the choice in the
``lmstudio_lang`` cookie, which the next page load and every request carry. ``lang_of`` reads that
cookie, else the request's Accept-Language, else English. The CLI and the API stay English.
"""
from __future__ import annotations

import json

import gradio as gr

from ..messages import DEFAULT, LOCALES, Message, render, say, strings  # noqa: F401  (the one table reader)

LANGS = {"en": "English", "zh-CN": "简体中文"}  # code -> its own name, for the switch
COOKIE = "lmstudio_lang"


def gradio_i18n() -> gr.I18n:
    """The tables for ``mount_gradio_app(i18n=...)``: the browser looks ``t()`` markers up in them."""
    return gr.I18n(**{lang: strings(lang) for lang in LANGS})


def t(key: str) -> gr.i18n.I18nData:
    """A marker the browser translates (for text fixed at build time). An unknown key fails the build."""
    if key not in strings(DEFAULT):
        raise KeyError(f"no string {key!r} in locales/{DEFAULT}.json")
    return gr.i18n.I18nData(key)


def tr(lang: str | None, key: str, /, **params) -> str:
    """The text of ``key`` in ``lang`` (English where a translation is missing), ``{name}``s filled in
    (positional-only, so a string may have a ``{lang}`` field too)."""
    return render(lang if lang in LANGS else DEFAULT, key, **params)


def match(tag: str | None) -> str | None:
    """One of LANGS for a BCP 47 tag, or None: every English is English, Chinese written in Simplified is zh-CN."""
    tag = (tag or "").strip().lower()
    if tag == "en" or tag.startswith("en-"):
        return "en"
    if tag == "zh" or (tag.startswith("zh-") and not any(s in tag for s in ("tw", "hk", "mo", "hant"))):
        return "zh-CN"
    return None


def from_accept_language(header: str | None) -> str:
    """The best of LANGS for an Accept-Language header (highest q first), else English."""
    ranked = []
    for i, part in enumerate((header or "").split(",")):
        tag, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            weight = 0.0
        ranked.append((-weight, i, tag))
    for _, _, tag in sorted(ranked):
        if lang := match(tag):
            return lang
    return DEFAULT


def lang_of(request: gr.Request | None) -> str:
    """The language of the page that sent ``request``: the switch's cookie, else Accept-Language."""
    if request is None:  # a direct call (tests, the API's own functions)
        return DEFAULT
    chosen = (getattr(request, "cookies", None) or {}).get(COOKIE)
    if chosen in LANGS:
        return chosen
    return from_accept_language((getattr(request, "headers", None) or {}).get("accept-language"))


# Gradio keeps its locale in a module the page loads as /assets/core-<hash>.js and offers no global
# to change it; its own Settings panel calls that module's changeLocale, and so do we (an import of
# the same URL returns the page's own module instance). Checked with gradio 6.31 (pinned).
_SET_LOCALE = """
const setLocale = async (lang) => {
  const urls = [...document.querySelectorAll('link[rel=modulepreload]')].map(l => l.href)
    .concat(performance.getEntriesByType('resource').map(e => e.name));
  const core = urls.find(u => /\\/assets\\/core-[^/]*\\.js$/.test(u));
  if (core) (await import(core)).changeLocale(lang);
};"""

# Resolves once the page shows ``lang``: Gradio loads a language's table before switching to it.
_WAIT = """
const shown = async (lang) => {
  for (let i = 0; i < 100 && document.documentElement.lang !== lang; i++) await new Promise(r => setTimeout(r, 20));
};"""

# On load: a remembered choice wins, else the browser's language mapped as ``match`` does (Gradio
# itself would show English for a plain "zh"). Returns the switch's value. ``relabel`` is defined by
# ``_relabel_js``.
_LOAD_BODY = f"""
  const saved = (document.cookie.match(/(?:^|; ){COOKIE}=([^;]*)/) || [])[1];
  const nav = (navigator.language || '').toLowerCase();
  const browser = (nav === 'zh' || (nav.startsWith('zh-') && !/tw|hk|mo|hant/.test(nav))) ? 'zh-CN' : null;
  const want = saved || browser;
  if (want && want !== document.documentElement.lang) {{ await setLocale(want); await shown(want); relabel(want); }}
  return (want || document.documentElement.lang) === 'zh-CN' ? 'zh-CN' : 'en';
}}"""

_SWITCH_BODY = f"""
  document.cookie = '{COOKIE}=' + lang + '; path=/; max-age=31536000; SameSite=Lax';
  await setLocale(lang);
  await shown(lang);
  relabel(lang);
  return lang;
}}"""


def _relabel_js(tabs: dict[str, gr.Tab]) -> str:
    """JS ``relabel(lang)``: writes each tab's name in ``lang`` into its tab-bar button. The tab bar
    keeps the names it was built with for tabs not opened yet; re-sending the tabs from the server
    (gr.update(label=...)) renamed them, but then every streamed step re-rendered the open tab, and
    Stop took ~30 s to click mid-reply (tests/test_ui_i18n_browser.py)."""
    names = {f"{tab.elem_id}-button": {lang: tr(lang, key) for lang in LANGS} for key, tab in tabs.items()}
    return (f"const relabel = (lang) => {{ const names = {json.dumps(names, ensure_ascii=False)};"
            " for (const [id, by] of Object.entries(names)) {"
            " const b = document.getElementById(id); if (b && by[lang]) b.textContent = by[lang]; } };")


def build_switch() -> gr.Radio:
    """The language switch (elem_id ``lang-switch``); ``wire_switch`` makes it work once the tabs exist."""
    return gr.Radio([(name, code) for code, name in LANGS.items()], value=DEFAULT, show_label=False,
                    container=False, elem_id="lang-switch", scale=0, min_width=220)


def wire_switch(demo: gr.Blocks, switch: gr.Radio, tabs: dict[str, gr.Tab]):
    """On load the page takes the remembered or the browser's language; a click changes it and
    remembers it. ``tabs`` (key -> gr.Tab, each with an elem_id): their tab-bar names are rewritten
    in the browser (``_relabel_js``). Returns the switch's event, for the caller to chain what the
    server words (``.then``)."""
    private = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
    relabel = _relabel_js(tabs)
    demo.load(None, None, switch, js="async () => {" + _SET_LOCALE + _WAIT + relabel + _LOAD_BODY, **private)
    # .input, not .change: setting the value on load is not a choice to remember.
    return switch.input(None, switch, None, js="async (lang) => {" + _SET_LOCALE + _WAIT + relabel + _SWITCH_BODY,
                        **private)
