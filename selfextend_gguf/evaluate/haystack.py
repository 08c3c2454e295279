"""Needle-in-a-haystack contexts: real prose with many labelled facts hidden at spread depths.

A context is an instruction, then a slice of a long text cut at sentence boundaries, with ``K``
needles ("The special magic number for the amber harbor is 4830172.") placed after sentences at
depths ``(i + 1/2) / K`` of the prose, so that they cover the whole context evenly. Each needle has
its own label, so the ``K`` questions that follow the context ask ``K`` different things of the
same cached context, and each question costs only its own tokens.

Everything is built as token lists, piece by piece, so that the context is exactly the same tokens
for every method and every question, and each needle's token position is known.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

from ..errors import EvaluationError

INTRO = ("Below is a long text. Hidden in it are special magic numbers, each for a different name. "
         "Remember them: you will be asked for them at the end.")
NEEDLE = " The special magic number for {label} is {value}."
QUESTION = "\n\nQuestion: What is the special magic number for {label}?\nAnswer: The special magic number for {label} is"

# a context pairs distinct adjectives with distinct nouns, so that no two labels share a word
_ADJECTIVES = ("amber", "ancient", "bitter", "brave", "bright", "broken", "calm", "copper", "crimson", "curious",
               "distant", "dusty", "eastern", "electric", "empty", "fading", "frozen", "gentle", "golden", "hidden",
               "hollow", "honest", "humble", "iron", "ivory", "jolly", "lonely", "lucky", "marble", "misty",
               "narrow", "noble", "northern", "olive", "painted", "patient", "purple", "quiet", "rapid", "rusty",
               "scarlet", "secret", "silent", "silver", "sleepy", "stone", "velvet", "wandering", "wild", "wooden")
_NOUNS = ("anchor", "archive", "badger", "bakery", "beacon", "bridge", "canyon", "castle", "cellar", "chapel",
          "compass", "cottage", "dragon", "engine", "falcon", "fountain", "garden", "glacier", "harbor", "helmet",
          "island", "kettle", "ladder", "lantern", "library", "lighthouse", "meadow", "mill", "mirror", "monastery",
          "orchard", "otter", "palace", "pigeon", "quarry", "rabbit", "river", "saddle", "schooner", "shepherd",
          "statue", "teapot", "temple", "theatre", "tower", "trumpet", "valley", "violin", "walrus", "windmill")
#: the most needles one context can hold (each adjective and each noun is used once)
MAX_NEEDLES = min(len(_ADJECTIVES), len(_NOUNS))

Tokenize = Callable[[str], List[int]]


@dataclass(frozen=True)
class Needle:
    """One hidden fact, and where it ended up."""

    label: str
    value: str
    position: int  # token index of the needle's first token in the context
    depth: float  # position / context tokens


@dataclass(frozen=True)
class Haystack:
    """One context (``tokens``, BOS first) and its questions, in the order they are asked."""

    text: str
    index: int
    tokens: List[int]
    needles: List[Needle]  # in position order
    questions: List[Tuple[Needle, List[int]]]  # each needle once, in random order, with its question's tokens


def sentences(text: str) -> List[str]:
    """The text's sentences, each with the whitespace that leads into it.

    Paragraphs (separated by blank lines) are unwrapped; a paragraph's first sentence starts with a
    blank line, the others with a space. Splitting after ``.``, ``!`` or ``?`` is rough but only
    needs to give places where a needle reads as a sentence of its own.
    """
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = " ".join(paragraph.split())
        for i, sentence in enumerate(s for s in re.split(r"(?<=[.!?])\s+", words) if s):
            out.append(("\n\n" if i == 0 else " ") + sentence)
    return out


def continuation_tokenizer(tokenize: Tokenize) -> Tokenize:
    """``tokenize`` for pieces of text that continue other text.

    A SentencePiece vocabulary (Llama 2, Mistral) puts a space before every text it tokenizes, as
    at the start of a document; a piece inside the context has no such space, so it is taken off
    again: a piece that starts with its own space gives that one up, any other drops the lone space
    token. Byte-level BPE vocabularies (SmolLM2, Llama 3, Qwen) add nothing and are left alone.
    """
    probe = tokenize("\n")
    if len(probe) < 2:
        return tokenize
    space = probe[0]

    def tokenize_piece(text: str) -> List[int]:
        if text.startswith(" "):
            return tokenize(text[1:])
        ids = tokenize(text)
        return ids[1:] if ids and ids[0] == space else ids

    return tokenize_piece


def tokenize_sentences(text: str, tokenize: Tokenize) -> List[List[int]]:
    """:func:`sentences`, each tokenized on its own (no BOS); done once per text."""
    return [tokenize(s) for s in sentences(text)]


def labels_and_values(rng: random.Random, k: int) -> List[Tuple[str, str]]:
    """``k`` distinct labels (no shared word) with distinct random 7-digit values."""
    if not 1 <= k <= MAX_NEEDLES:
        raise EvaluationError(f"--needles must be between 1 and {MAX_NEEDLES}, got {k}")
    labels = [f"the {a} {n}" for a, n in zip(rng.sample(_ADJECTIVES, k), rng.sample(_NOUNS, k))]
    values = rng.sample(range(1_000_000, 10_000_000), k)
    return [(label, str(v)) for label, v in zip(labels, values)]


def build(prose: Sequence[List[int]], tokenize: Tokenize, *, n_tokens: int, needles: int, max_tokens: int,
          rng: random.Random, bos: List[int], text: str = "", index: int = 0) -> Haystack:
    """A context of at most ``n_tokens - (longest question + max_tokens)`` tokens, so that every
    question and its answer fit ``n_tokens``.

    ``prose`` is :func:`tokenize_sentences` of the text. The slice starts at a random sentence and
    wraps around the end of the text; a text too short to fill the context without repeating
    itself is refused.
    """
    facts = labels_and_values(rng, needles)
    head = bos + tokenize(INTRO)
    pieces = [tokenize(NEEDLE.format(label=label, value=value)) for label, value in facts]
    questions = [tokenize(QUESTION.format(label=label)) for label, _ in facts]
    budget = n_tokens - max(map(len, questions)) - max_tokens - len(head) - sum(map(len, pieces))
    total = sum(map(len, prose))
    if budget > total:
        raise EvaluationError(f"the text {text!r} has {total} tokens, fewer than the {budget} of prose a "
                              f"{n_tokens}-token context needs; use a longer --text or smaller --lengths")
    if budget < 4 * needles:
        raise EvaluationError(f"length {n_tokens} is too short for {needles} needles and their questions; "
                              "use longer --lengths or fewer --needles")
    start = rng.randrange(len(prose))
    taken: List[List[int]] = []
    used = 0
    for i in range(len(prose)):
        sentence = prose[(start + i) % len(prose)]
        if used + len(sentence) > budget:
            break
        taken.append(sentence)
        used += len(sentence)
    if budget - used > max(64, budget // 10):  # a "sentence" too long to fit: the text has few . ! or ?
        raise EvaluationError(f"the text {text!r} could fill only {used} of the {budget} tokens of prose a "
                              f"{n_tokens}-token context needs before a sentence too long to fit; use a text "
                              "with sentences that end in . ! or ?")
    tokens, placed = list(head), []
    order = list(range(needles))
    rng.shuffle(order)  # which label sits at which depth
    targets = iter(((i + 0.5) / needles * used, order[i]) for i in range(needles))
    target = next(targets, None)
    done = 0
    for sentence in [*taken, None]:
        while target is not None and (sentence is None or done >= target[0]):
            placed.append((len(tokens), target[1]))
            tokens += pieces[target[1]]
            target = next(targets, None)
        if sentence is not None:
            tokens += sentence
            done += len(sentence)
    hidden = [Needle(facts[k][0], facts[k][1], pos, round(pos / len(tokens), 4)) for pos, k in placed]
    asked = list(range(needles))
    rng.shuffle(asked)  # questions in an order unrelated to depth
    by_label = {n.label: n for n in hidden}
    return Haystack(text, index, tokens, hidden, [(by_label[facts[k][0]], questions[k]) for k in asked])
