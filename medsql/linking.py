"""Schema and value linking: the database values a question mentions, found before generation.

A model reads words; the database holds values ("Urin tract infection NOS", "PO", "SNF"). The
linker finds, for a question, the candidate values it names, from three sources:

- exact: a run of the question's words that is (case- and punctuation-insensitively) a value some
  text column holds ("... prescribed furosemide" -> PRESCRIPTIONS.DRUG = Furosemide);
- fuzzy: a value whose content words the question states, whole or as prefixes of at least four
  letters, so abbreviated dictionary titles are found from the words people use ("urinary tract
  infection" -> DIAGNOSES.SHORT_TITLE = "Urin tract infection NOS"), and near-misspellings;
- the lexicon (medsql/resources/lexicon.yaml, a versioned data file): clinical abbreviations and
  lay terms, either meaning a phrase that is then linked as above ("chf" -> congestive heart
  failure) or naming values directly ("by mouth" -> PRESCRIPTIONS.ROUTE = PO).

The values come from a `ValueIndex` (medsql.evaluation.recovery): the real demo tables, the full
code dictionaries and the training split's literals, never the test-suite databases. Codes
(ICD9_CODE, ITEMID) are linked only when the question speaks of a code. Numbers are left to the
model: a question's number is copied, not looked up.

    linker = Linker(ValueIndex.build("data/mimicsql.db", "data/splits/train.jsonl"))
    linker.link("how many chf patients got lasix po?")
    -> [Link(DEMOGRAPHIC.DIAGNOSIS = CONGESTIVE HEART FAILURE), Link(PRESCRIPTIONS.DRUG = Furosemide), ...]
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
from rapidfuzz import fuzz

from medsql.evaluation.recovery import ValueIndex, recoverable

log = logging.getLogger(__name__)

LEXICON = Path(__file__).parent / "resources" / "lexicon.yaml"
MAX_SPAN_WORDS = 24      # the longest run of question words looked up as one value (a fifth of the
                         # dictionaries' long titles run past 10 words)
MAX_LINKS = 8            # candidates returned for one question, best first
MIN_COVERAGE = 0.75      # share of a value's content words the question must state for a fuzzy link
PREFIX_CHARS = 4         # a value word matches a question word it is a prefix of (or that is its prefix)
SPELLING_RATIO = 88      # rapidfuzz ratio for a misspelt word to count as stated
CODE_COLUMNS = {("DIAGNOSES", "ICD9_CODE"), ("PROCEDURES", "ICD9_CODE"), ("LAB", "ITEMID")}
CODE_WORDS = {"code", "codes", "icd", "icd9", "icd-9", "itemid", "item"}
# Values of one or two letters ("F", "TP", "SL") are linked only where the question names their column.
SHORT_VALUE_CUES = {("DEMOGRAPHIC", "GENDER"): {"gender", "sex"}, ("PRESCRIPTIONS", "ROUTE"): {"route", "routes"}}
# Words that say nothing about which value is meant: never linked alone, not counted as content.
FILLER = frozenset("""
a an and the of in on to or for with without w wo by at from as is are was were be been not no nos nec
unsp unspecified specified site elsewhere classified mention other others any all patient patients pt pts
how many what which who whose when where number count list show give me find get number total their
has have had do does did that this those these there it its than more less over under above below least
most at after before during per day days year years old age episode care initial encounter mention
complication complications stated uncontrolled current
""".split())


@dataclass(frozen=True)
class Link:
    """One candidate: TABLE.COLUMN = value, found from `span` of the question (score 0-100)."""

    table: str
    column: str
    value: str
    span: str
    score: float
    source: str  # exact | fuzzy | lexicon

    def render(self) -> str:
        """As the model input carries it: `table.column: value` (lower case, as the compact form)."""
        return f"{self.table.lower()}.{self.column.lower()}: {self.value.lower()}"


def normalised(text: str) -> str:
    """One spelling per phrase for exact lookups: lower-cased words joined by single spaces."""
    return " ".join(re.findall(r"[a-z0-9%']+", text.lower()))


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9%']+", text.lower()) if w not in FILLER and not w.isdigit()]


@dataclass(frozen=True)
class _Term:
    says: tuple[str, ...]               # normalised phrases
    means: str | None
    links: tuple[tuple[str, str, str], ...]  # (table, column, value)


class LexiconError(ValueError):
    """A lexicon file that cannot be read (the message names file and entry)."""


def load_lexicon(path: str | Path = LEXICON) -> list[_Term]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LexiconError(f"{path}: cannot read the lexicon: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("terms"), list) or "version" not in data:
        raise LexiconError(f"{path}: expected `version:` and a list under `terms:`")
    terms = []
    for number, entry in enumerate(data["terms"], 1):
        where = f"{path}: terms[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("says"), list) or not entry["says"]:
            raise LexiconError(f"{where}: needs `says:` with a list of words")
        if ("means" in entry) == ("links" in entry):
            raise LexiconError(f"{where} ({entry.get('says')}): give exactly one of `means:` or `links:`")
        links = []
        for column, value in (entry.get("links") or {}).items():
            table, _, name = str(column).partition(".")
            if recoverable(table, name) is None and (table, name) != ("DEMOGRAPHIC", "EXPIRE_FLAG"):
                raise LexiconError(f"{where}: {column} is not a text column of the MIMICSQL schema")
            links.append((table, name, str(value)))
        says = tuple(normalised(str(s)) for s in entry["says"])
        terms.append(_Term(says, normalised(str(entry["means"])) if "means" in entry else None, tuple(links)))
    return terms


class Linker:
    """Finds the values a question mentions among those a ValueIndex holds (see the module doc)."""

    def __init__(self, values: ValueIndex, lexicon: str | Path = LEXICON, max_links: int = MAX_LINKS):
        self.values, self.max_links = values, max_links
        self._exact: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        self._codes: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        self._entries: list[tuple[str, str, str, tuple[str, ...]]] = []  # table, column, value, content words
        self._by_prefix: dict[str, list[int]] = defaultdict(list)
        for table, column in values.columns():
            kind = recoverable(table, column)
            for value in values.values(table, column):
                if (table, column) in CODE_COLUMNS:
                    self._codes[normalised(value)].append((table, column, value))
                    continue
                if kind != "fuzzy" and (table, column) != ("DEMOGRAPHIC", "NAME"):
                    continue  # doses, units, formulary codes: not what questions name
                key = normalised(value)
                if key and key not in FILLER and len(key) > 2:
                    self._exact[key].append((table, column, value))
                words = tuple(dict.fromkeys(content_words(value)))
                if kind == "fuzzy" and words:
                    index = len(self._entries)
                    self._entries.append((table, column, value, words))
                    for word in words:
                        if len(word) >= PREFIX_CHARS:
                            self._by_prefix[word[:PREFIX_CHARS]].append(index)
        self._terms = load_lexicon(lexicon)
        self._term_by_phrase = {phrase: term for term in self._terms for phrase in term.says}
        unknown = [f"{t}.{c} = {v}" for term in self._terms for t, c, v in term.links
                   if values.holds(t, c, v) is False]
        if unknown:
            log.debug("lexicon values not in the value index (kept: the model may still use them): %s", unknown)

    # ---- linking -------------------------------------------------------------------------
    def link(self, question: str) -> list[Link]:
        """The best candidates for the question's values, best first, at most `max_links`."""
        words = normalised(question).split()
        found: dict[tuple[str, str, str], Link] = {}

        def add(link: Link) -> None:
            key = (link.table, link.column, link.value.lower())
            if key not in found or found[key].score < link.score:
                found[key] = link

        spans = _spans(words, MAX_SPAN_WORDS)
        termed = [span for span in spans if span in self._term_by_phrase]
        # A phrase the lexicon knows means that, not its words: "high blood pressure" is no lab fluid.
        phrases = [(span, span) for span in spans if not any(_inside(span, t) for t in termed)]
        for span in termed:
            term = self._term_by_phrase[span]
            for table, column, value in term.links:
                add(Link(table, column, self._stored(table, column, value), span, 99.0, "lexicon"))
            if term.means:
                phrases += [(sub, span) for sub in _spans(term.means.split(), MAX_SPAN_WORDS)]
        for phrase, said in phrases:
            for table, column, value in self._exact.get(phrase, ()):
                add(Link(table, column, value, said, 100.0 if phrase == said else 98.0,
                         "exact" if phrase == said else "lexicon"))
        for (table, column), cues in SHORT_VALUE_CUES.items():
            if cues & set(words):
                for value in self.values.values(table, column):
                    if len(value) <= 2 and value.lower() in words:
                        add(Link(table, column, value, value.lower(), 97.0, "exact"))
        if CODE_WORDS & set(words):
            for word in words:
                for table, column, value in self._codes.get(word, ()):
                    add(Link(table, column, value, word, 97.0, "exact"))
        free = [p for p, s in phrases if p == s and " " not in p and p not in self._term_by_phrase]
        for link in self._fuzzy(free, [p for p, s in phrases if p != s]):
            add(link)
        ranked = sorted(found.values(), key=lambda k: (-k.score, -len(k.span), k.table, k.column, k.value))
        return _without_shadowed(ranked)[: self.max_links]

    def _fuzzy(self, words: list[str], expansions: list[str]) -> list[Link]:
        """Values whose content words the question (or a lexicon expansion) states."""
        expanded = [x for e in expansions for x in e.split()]
        stated = list(dict.fromkeys(w for w in words + expanded if w not in FILLER and not w.isdigit() and len(w) >= 3))
        heard = set(words + expanded)
        hits: Counter = Counter()
        for word in stated:
            for index in set(self._by_prefix.get(word[:PREFIX_CHARS], ())) if len(word) >= PREFIX_CHARS else ():
                hits[index] += 1
        links = []
        for index, count in hits.items():
            table, column, value, value_words = self._entries[index]
            if count < MIN_COVERAGE * len(value_words):
                continue
            # A one-word value must be stated whole (or misspelt): as a prefix it is another word
            # ("young" of "youngest", "base" of "baseline"); abbreviations live in longer titles.
            matched = [w for w in value_words if any(_same_word(w, s, len(value_words) > 1) for s in stated)]
            coverage = len(matched) / len(value_words)
            if coverage < MIN_COVERAGE or (len(value_words) == 1 and len(matched[0]) < 5 if matched else True):
                continue
            # More of the value stated, and more words of it, rank higher; 60-96. Of two values with
            # the same content words, the one whose other words the question also says ranks higher:
            # "without mention of" picks "... without mention of cerebral infarction" over "... with".
            filler = [w for w in normalised(value).split() if w in FILLER]
            said = sum(w in heard for w in filler) / len(filler) if filler else 0.0
            score = 60.0 + 30.0 * coverage + min(5.0, len(matched)) + said
            links.append(Link(table, column, value, " ".join(matched), round(score, 1), "fuzzy"))
        return links

    def _stored(self, table: str, column: str, value: str) -> str:
        """The index's casing of a lexicon value (the lexicon's own when the index lacks it)."""
        for stored in self.values.values(table, column):
            if stored.lower() == value.lower():
                return stored
        return value


def _spans(words: list[str], max_words: int) -> list[str]:
    return list(dict.fromkeys(" ".join(words[i:j]) for i in range(len(words))
                              for j in range(i + 1, min(len(words), i + max_words) + 1)))


def within(words: str, text: str) -> bool:
    """Whether `words` run, whole words, within `text` (both normalised), or are all of it."""
    return f" {words} " in f" {text} "


def _inside(span: str, phrase: str) -> bool:
    """Whether `span` is a shorter run of words within `phrase`."""
    return span != phrase and within(span, phrase)


def _same_word(value_word: str, stated: str, prefix: bool = True) -> bool:
    if value_word == stated:
        return True
    if prefix and len(value_word) >= PREFIX_CHARS and stated.startswith(value_word):
        return True  # the dictionary's abbreviation of the stated word ("urin" of "urinary")
    return min(len(value_word), len(stated)) >= 5 and fuzz.ratio(value_word, stated) >= SPELLING_RATIO


def _without_shadowed(ranked: list[Link]) -> list[Link]:
    """Drop a link whose whole span lies inside a longer span already linked at least as well: one
    phrase of a question names one value ("heart failure" inside "congestive heart failure"; the drug
    type "base" inside the diagnosis "cl skul base fx-coma nos")."""
    kept: list[Link] = []
    for link in ranked:
        if any(link.span != k.span and _inside(link.span, k.span) and k.score >= link.score for k in kept):
            continue
        kept.append(link)
    return kept


def input_linker(values: ValueIndex) -> Linker:
    """The linker whose candidates go into the model input, in training and at answer time: over what
    the database holds (demo tables, code dictionaries), not the training split's literals. With them
    every training question would find its own literal, and the model would learn to lean on a
    candidate that a new question's value (a patient, a drug the database lacks) never has."""
    return Linker(values.database_only())


def linked_input(text: str, links: list[Link], count: int) -> str:
    """The model input with the linker's best `count` candidates as its tail, in training and at answer
    time alike: `text | table.column: value | ...` (the text itself for none)."""
    return text + "".join(f" | {link.render()}" for link in links[:count])


def linking_recall(linker: Linker, rows: list[dict]) -> dict[str, dict[str, float | int]]:
    """Per wording (each row's `variant`) and for "all": the share of gold text literals (`=` on a
    free-text column) among the linker's candidates for the question; rows outside the grammar skipped."""
    from medsql.sqlform import FormError, parse_sql

    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        try:
            query = parse_sql(row["sql"])
        except FormError:
            continue
        gold = [(c.table, c.column, c.value.lower()) for c in query.conditions
                if c.op == "=" and recoverable(c.table, c.column) == "fuzzy"]
        if not gold:
            continue
        found = {(k.table, k.column, k.value.lower()) for k in linker.link(row["question"])}
        for wording in (row["variant"], "all"):
            totals[wording][0] += sum(g in found for g in gold)
            totals[wording][1] += len(gold)
    return {w: {"recall": round(hit / n, 4), "gold_literals": n} for w, (hit, n) in sorted(totals.items())}
