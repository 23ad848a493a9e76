"""What normalised text is, and what a question may be: one answer for every part of medsql.

- `collapse_whitespace`: runs of whitespace become one space, ends stripped (SQL and questions).
- `normalise_question`: collapsed whitespace, lower-cased under the case policy; the form the
  preprocess stage writes and the Predictor feeds the model, and the key the demo looks gold up by.
- `check_question`: what every interface (`medsql ask`, the JSON API, the pyfunc, the demo page)
  accepts as a question. Text that is not valid Unicode (a lone surrogate, undecodable bytes) and
  control characters are refused with a message saying what and where; an empty question or one
  over MAX_QUESTION_CHARS likewise.
"""

from __future__ import annotations

import unicodedata

from medsql.schema import TABLES

# The longest question any interface accepts: the data validation stage's upper bound on question
# length (params.yaml validate.question_chars) is the same, so nothing the model was trained and
# validated on is refused, and nothing much longer than it is ever asked.
MAX_QUESTION_CHARS = 400


class QuestionError(ValueError):
    """A question no interface will answer; the message says why, for the person who asked."""


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def normalise_question(text: str, lowercase: bool = True) -> str:
    text = collapse_whitespace(text)
    return text.lower() if lowercase else text


def is_number(text: str) -> bool:
    """Whether a literal reads as a number ("65", "2164.0")."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_question(question: object) -> str:
    """The question as the model will be asked it (NFC, whitespace collapsed, case kept), or QuestionError."""
    if isinstance(question, bytes | bytearray):
        try:
            question = bytes(question).decode("utf-8")
        except UnicodeDecodeError as err:
            raise QuestionError(f"the question is not valid UTF-8 text (byte {err.start}: "
                                f"{bytes(question)[err.start:err.start + 1]!r})") from err
    if not isinstance(question, str):
        raise QuestionError(f"the question must be text, not {type(question).__name__}")
    for position, char in enumerate(question):
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise QuestionError(f"the question is not valid Unicode text (a lone surrogate "
                                f"U+{ord(char):04X} at character {position + 1})")
        if unicodedata.category(char) in ("Cc", "Cf") and not char.isspace():
            raise QuestionError(f"the question holds a control character (U+{ord(char):04X} at "
                                f"character {position + 1}); type plain text")
    question = collapse_whitespace(unicodedata.normalize("NFC", question))
    if not question:
        raise QuestionError("the question is empty: ask something, e.g. 'how many patients are over 65?'")
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionError(f"the question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}")
    return question


def schema_context() -> str:
    return " | tables: " + " ".join(f"{t.lower()}({', '.join(c.lower() for c in cols)})"
                                   for t, cols in TABLES.items())


def model_input(question: str, task_prefix: str, with_schema: bool) -> str:
    """The text the model reads: task prefix + question (+ the schema, optionally). The preprocess
    stage writes it into the splits and the Predictor builds it for every question it is asked."""
    return task_prefix + question + (schema_context() if with_schema else "")
