"""Random English text for SynthTalk: sentences of common words, with commas as pauses."""

from __future__ import annotations

import numpy as np

# Common English words, grouped loosely so that sentences mix short function words with
# longer content words (more varied mouth shapes).
_FUNCTION = """
a an the this that these those some any each every no all both
i you he she it we they me him her us them my your his its our their
is are was were be been am do does did have has had will would can could should may might must
and or but so if then than because while when where why how what who which
in on at by for with about from into over under after before between through during without
up down out off again very just not only also too here there now still yet even ever never
""".split()

_NOUNS = """
time year people way day man woman child world life hand part place case week company system
program question work government number night point home water room mother area money story
fact month lot right study book eye job word business issue side kind head house service friend
father power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war history
party result change morning reason research girl guy moment air teacher force education foot
boy age policy music market sense nation plan college interest death experience effect class
table window garden river mountain ocean summer winter apple bread coffee paper phone picture
voice street family answer problem school country state group student moment weather island
""".split()

_VERBS = """
say get make go know take see come think look want give use find tell ask seem feel try leave
call keep let begin help talk turn start show hear play run move like live believe hold bring
happen write provide sit stand lose pay meet include continue set learn lead understand watch
follow stop create speak read allow add spend grow open walk win offer remember love consider
appear buy wait serve die send expect build stay fall cut reach kill remain suggest raise pass
sell require report decide pull smile laugh breathe travel carry choose listen jump sleep
""".split()

_ADJECTIVES = """
good new first last long great little own other old right big high different small large next
early young important few public bad same able best better sure free true full special easy
clear recent certain personal open red blue green black white happy strong possible whole
real simple hard major late human local wide deep warm cold quiet loud bright dark soft smooth
beautiful wonderful popular famous modern ancient careful gentle honest lucky proud quick slow
""".split()

WORDS: tuple[str, ...] = tuple(dict.fromkeys(_FUNCTION + _NOUNS + _VERBS + _ADJECTIVES))

_CONTENT = _NOUNS + _VERBS + _ADJECTIVES


def make_sentence(rng: np.random.Generator, min_words: int = 3, max_words: int = 14,
                  comma_prob: float = 0.35) -> str:
    """One sentence: random length, about half content words, maybe a comma (a pause)."""
    n = int(rng.integers(min_words, max_words + 1))
    words = [str(rng.choice(_FUNCTION if rng.random() < 0.45 else _CONTENT)) for _ in range(n)]
    if n >= 5 and rng.random() < comma_prob:
        words[int(rng.integers(2, n - 2))] += ","
    words[0] = words[0].capitalize()
    return " ".join(words) + str(rng.choice([".", ".", ".", "?", "!"]))


def make_utterance(rng: np.random.Generator) -> str:
    """One to three sentences spoken without an inserted silence."""
    return " ".join(make_sentence(rng) for _ in range(int(rng.choice([1, 1, 2, 3]))))
