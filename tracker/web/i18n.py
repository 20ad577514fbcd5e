"""The page's languages: gettext catalogues compiled from ``tracker/locale`` when the daemon
starts, and the choice of language for each request.

The ``.po`` files are the only source: they ship as package data and are compiled in memory
(Babel's ``read_po`` + ``write_mo`` into ``gettext.GNUTranslations``) the first time a page is
built. So no build step can be forgotten: a wheel, ``pip install -e .`` and a plain checkout all
read the same files, and an edited ``.po`` is in use at the next start.

Which language a request gets, first match wins: ``?lang=ru|en`` (remembered in the
``tracker_lang`` cookie), that cookie (the person chose on the page), ``ui.language`` when it
is ``ru`` or ``en`` (the account's language, whatever the browser says), the browser's
``Accept-Language`` when ``ui.language = "auto"``, English.
"""

from __future__ import annotations

import gettext
from collections.abc import Mapping
from functools import cache
from importlib import resources
from io import BytesIO

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from tracker.core.formatting import LANGUAGES, best_language

COOKIE = "tracker_lang"
COOKIE_SECONDS = 365 * 86400
DOMAIN = "messages"


def catalogue_path(lang: str) -> resources.abc.Traversable:
    """Where the ``.po`` file of ``lang`` ships."""
    return resources.files("tracker") / "locale" / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


@cache
def translations(lang: str) -> gettext.GNUTranslations:
    """The compiled catalogue of ``lang`` (compiled once per process)."""
    with catalogue_path(lang).open("rb") as source:
        catalog = read_po(source, locale=lang, domain=DOMAIN)
    compiled = BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)  # a fuzzy guess is not a translation
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def choose(configured: str, asked: str | None, remembered: str | None,
           accept_language: str | None) -> str:
    """The language of one request (see the module's docstring for the order)."""
    for candidate in (asked, remembered):
        if candidate in LANGUAGES:
            return str(candidate)
    if configured in LANGUAGES:
        return configured
    return best_language(accept_language) or LANGUAGES[0]


def from_request(configured: str, args: Mapping[str, str], cookies: Mapping[str, str],
                 accept_language: str | None) -> tuple[str, bool]:
    """The language, and whether ``?lang`` asked for it (then the page sets the cookie)."""
    asked = args.get("lang")
    lang = choose(configured, asked, cookies.get(COOKIE), accept_language)
    return lang, asked == lang


def text(lang: str, message: str, **params: object) -> str:
    """``message`` translated into ``lang``, with ``%(name)s`` filled from ``params``."""
    translated = translations(lang).gettext(message)
    return translated % params if params else translated
