"""The page in Russian and English: the catalogues (complete, translated, in step with the
source), the choice of language per request, and every page rendered in Russian with no
English left in it; the pure formatting helpers."""

from __future__ import annotations

import re
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import trio
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from tests.pagecalls import ANSWERED, LOST, populate
from tests.support import open_system
from tracker.core import formatting
from tracker.db import keys, sessions
from tracker.web import i18n

ROOT = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("Europe/Moscow")
# Names and notations that are the same in every language.
PROPER = {"tracker", "UIS", "retailCRM", "API", "Mermaid", "id", "POST", "GET", "PM", "AM",
          "employees"}


def _extracted() -> set[str]:
    """Every msgid the source holds, found the way ``pybabel extract -F babel.cfg`` finds it."""
    with open(ROOT / "babel.cfg", encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords={
                "_": None, "gettext": None, "ngettext": (1, 2), "N_": None}):
        found.add(message if isinstance(message, str) else message[0])
    return found


def _catalogue(lang: str):  # type: ignore[no-untyped-def]
    with i18n.catalogue_path(lang).open("rb") as source:
        return read_po(source, locale=lang)


@pytest.mark.parametrize("lang", formatting.LANGUAGES)
def test_every_string_of_the_source_is_in_each_catalogue_and_nothing_else(lang):
    catalogue = _catalogue(lang)
    ids = {m.id if isinstance(m.id, str) else m.id[0] for m in catalogue if m.id}
    source = _extracted()
    assert len(source) > 150  # the extraction ran over the templates and the modules
    assert sorted(source - ids) == [], f"not in {lang}/messages.po: run `make messages`"
    assert sorted(ids - source) == [], f"stale entries in {lang}/messages.po"


@pytest.mark.parametrize("lang", formatting.LANGUAGES)
def test_every_catalogue_entry_is_translated_and_keeps_its_placeholders(lang):
    catalogue = _catalogue(lang)
    untranslated = [m.id for m in catalogue if m.id and (
        m.fuzzy or not (all(m.string) if isinstance(m.string, tuple) else m.string))]
    assert untranslated == []
    problems = [(m.id, [str(e) for e in errors]) for m, errors in catalogue.check()]
    assert problems == []  # python-format placeholders and plural forms match
    for message in catalogue:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = set(re.findall(r"%\(\w+\)s", ids[0]))
        for string in strings:
            assert set(re.findall(r"%\(\w+\)s", string)) == wanted, message.id
        if lang == "ru":
            assert re.search("[а-яё]", strings[0], re.I), f"not Russian: {message.id!r}"


def test_the_compiled_catalogue_translates_and_leaves_no_fuzzy_guess():
    assert i18n.text("ru", "In progress") == "Идут сейчас"
    assert i18n.text("en", "In progress") == "In progress"
    assert i18n.text("ru", "No call %(id)s", id=7) == "Звонка 7 нет"
    plural = i18n.translations("ru").ngettext
    assert [plural("%(num)s attempt", "%(num)s attempts", n) % {"num": n}
            for n in (1, 3, 5, 21)] == ["1 попытка", "3 попытки", "5 попыток", "21 попытка"]


@pytest.mark.parametrize(("configured", "asked", "remembered", "accept", "expected"), [
    ("auto", None, None, None, "en"),
    ("auto", None, None, "ru-RU,ru;q=0.9,en;q=0.8", "ru"),
    ("auto", None, None, "de-DE,en;q=0.5,ru;q=0.7", "ru"),  # by weight, not by position
    ("auto", None, None, "de, fr", "en"),
    ("auto", None, None, "ru;q=0", "en"),
    ("ru", None, None, "en-US,en", "ru"),  # ui.language wins over the browser
    ("en", None, None, "ru", "en"),
    ("ru", "en", None, "ru", "en"),  # the person's choice on the page wins over the config
    ("ru", None, "en", "ru", "en"),  # and is remembered
    ("auto", "xx", "de", "ru", "ru"),  # unknown choices are ignored
])
def test_the_language_of_a_request(configured, asked, remembered, accept, expected):
    assert i18n.choose(configured, asked, remembered, accept) == expected


def _plain(text: str) -> str:
    """CLDR puts no-break and narrow no-break spaces between number and unit: compare words."""
    return text.replace("\xa0", " ").replace("\u202f", " ")


def test_numbers_phones_dates_and_durations_per_language():
    moment = datetime(2026, 12, 4, 21, 5, 3, tzinfo=TZ).timestamp()
    assert formatting.phone("79020790876", "RU") == "+7 902 079-08-76"
    assert formatting.phone("8 (902) 079-08-76", "RU") == "+7 902 079-08-76"
    assert formatting.phone("101", "RU") == "101"  # an extension stays as it is
    assert formatting.phone(None) == ""
    assert _plain(formatting.moment(moment, TZ, "ru")) == "4 дек. 2026 г., 21:05:03"
    assert _plain(formatting.moment(moment, TZ, "en")) == "Dec 4, 2026, 9:05:03 PM"
    assert _plain(formatting.clock(moment, TZ, "ru")) == "21:05:03"
    assert _plain(formatting.number(12345, "ru")) == "12 345"
    assert formatting.number(12345, "en") == "12,345"
    assert _plain(formatting.percent(0.237, "ru")) == "24 %"
    assert _plain(formatting.duration(42, "ru")) == "42 с"
    assert _plain(formatting.duration(575, "ru")) == "9 мин 35 с"
    assert _plain(formatting.duration(575, "en")) == "9 min 35 sec"
    assert _plain(formatting.duration(7260, "en")) == "2 hr 1 min"
    assert _plain(formatting.duration(7205, "en")) == "2 hr"


# -- pages over HTTP --------------------------------------------------------------------------

class _Text(HTMLParser):
    """The words a person reads on a page: text and the attributes read aloud or shown, minus
    code, data marked ``translate="no"`` (numbers, names, upstream answers), what is marked as
    written in another language (``lang``: the language switch) and scripts."""

    SKIP = {"code", "pre", "script", "style", "kbd"}
    VOID = {"br", "img", "input", "meta", "link", "hr", "source", "wbr", "col", "area", "base"}

    def __init__(self, lang: str) -> None:
        super().__init__()
        self.lang = lang
        self.stack: list[bool] = []
        self.words: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        skip = (bool(self.stack and self.stack[-1]) or tag in self.SKIP
                or values.get("translate") == "no"
                or values.get("lang", self.lang) != self.lang)  # marked as another language
        if not skip:
            for name in ("aria-label", "title", "placeholder", "alt"):
                if values.get(name):
                    self.words.append(str(values[name]))
            if tag == "input" and values.get("type") in ("submit", "button") and values.get(
                    "value"):
                self.words.append(str(values["value"]))
        if tag not in self.VOID:
            self.stack.append(skip)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not (self.stack and self.stack[-1]) and data.strip():
            self.words.append(data.strip())


def _english_left(html: str) -> list[str]:
    """Latin words on a Russian page that are not names or notations."""
    parser = _Text("ru")
    parser.feed(html)
    left = []
    for text in parser.words:
        for word in re.findall(r"[A-Za-z][A-Za-z-]*[A-Za-z]", text):
            if word not in PROPER and not word.startswith("statecharts"):
                left.append(f"{word!r} in {text[:80]!r}")
    return left


async def test_pages_in_russian_have_no_english_left_and_in_english_no_russian(tmp_path):
    with trio.fail_after(40):
        async with open_system(tmp_path) as d:
            await populate(d)
            info, _ = keys.create(d.ctx.store, "ops", ["calls:read", "outbox:write",
                                                       "log:read"])
            cookie = {"Cookie": f"tracker_session={sessions.open_session(d.ctx.store, info)}"}
            pages = {}
            for lang in ("ru", "en"):
                for path in ("/", f"/calls/{ANSWERED}", f"/calls/{LOST}", "/calls/1",
                             "/login", "/?state=nowhere&limit=x&since=yesterday"):
                    joiner = "&" if "?" in path else "?"
                    answer = await d.client.get(f"{d.url}{path}{joiner}lang={lang}",
                                                headers=cookie)
                    assert answer.status_code in (200, 404), (path, answer.status_code)
                    assert answer.headers["content-language"] == lang
                    pages[lang, path] = answer.text
    for (lang, path), html in pages.items():
        if lang == "ru":
            left = _english_left(html)
            assert not left, f"{path}:\n" + "\n".join(left)
        else:
            parser = _Text("en")
            parser.feed(html)
            russian = [w for w in parser.words if re.search("[а-яё]", w, re.I)]
            assert russian == [], path
    pages = {key: _plain(html) for key, html in pages.items()}
    home_ru, home_en = pages["ru", "/"], pages["en", "/"]
    assert "Идут сейчас" in home_ru and "In progress" in home_en
    assert '<html lang="ru">' in home_ru
    assert "+7 902 079-08-76" in home_ru  # phonenumbers, the account's region
    assert "Анна Иванова · 101" in home_ru and "Guest · не сопоставлен" in home_ru
    assert "Guest · not mapped" in home_en
    assert "Соколова Ольга" in home_ru  # the caller's card from telephony/manager
    call_ru = pages["ru", f"/calls/{ANSWERED}"]
    # the legs report's documented form: {media_url}/{call_session_id}/{record}, no slash
    assert re.search(r'<audio controls preload="none" src="https://media\.test/talk/'
                     rf'{ANSWERED}/\d+"', call_ru)
    assert f'href="{d.settings.crm.url.rstrip("/")}/customers/77"' in call_ru
    assert "1 мин 35 с" in call_ru  # the talk time, for the language
    for name in ("hours", "answers", "people", "callbacks", "statechart"):
        assert f'data-picture="{name}"' in home_ru
    assert "Не учтено" in pages["ru", "/?state=nowhere&limit=x&since=yesterday"]


async def test_accept_language_the_lang_switch_its_cookie_and_the_configured_language(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path, admin={"allow_loopback_without_key": True}) as d:
            russian = await d.client.get(d.url + "/", headers={"Accept-Language": "ru-RU,ru"})
            assert russian.headers["content-language"] == "ru"
            assert "<h2>Идут сейчас</h2>" in russian.text
            assert "tracker_lang" not in russian.headers.get("set-cookie", "")
            english = await d.client.get(d.url + "/?lang=en", headers={"Accept-Language": "ru"})
            assert "<h2>In progress</h2>" in english.text
            cookie = english.headers["set-cookie"]
            assert "tracker_lang=en" in cookie and "Max-Age=" in cookie
            remembered = await d.client.get(d.url + "/", headers={
                "Accept-Language": "ru", "Cookie": "tracker_lang=en"})
            assert remembered.headers["content-language"] == "en"
            d.client.cookies.clear()  # the client kept tracker_lang=en like a browser would
            login = await d.client.get(d.url + "/login", headers={"Accept-Language": "ru"})
            assert "Войти" in login.text
            refused = await d.client.post(d.url + "/outbox/1/retry?lang=ru")
            assert refused.status_code == 403
            assert refused.json()["message"].startswith("отправьте заголовок X-Requested-By")
    with trio.fail_after(30):
        async with open_system(tmp_path / "ru", ui={"language": "ru"},
                               admin={"allow_loopback_without_key": True}) as d:
            page = await d.client.get(d.url + "/", headers={"Accept-Language": "en-US,en"})
            assert page.headers["content-language"] == "ru"
            assert "<h2>Идут сейчас</h2>" in page.text
            chosen = await d.client.get(d.url + "/?lang=en", headers={"Accept-Language": "en"})
            assert "<h2>In progress</h2>" in chosen.text  # a person may still switch
