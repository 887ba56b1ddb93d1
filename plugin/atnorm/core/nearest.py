"""The declared actions nearest to an unknown one, at a cost bounded per call.

`difflib.get_close_matches` over a service's actions is the reference, but it runs
Ratcliff/Obershelp (`SequenceMatcher.ratio`, about 0.2 ms for two 60-character actions) on
every action of the service, because the shared `service.` prefix lets nearly all of them
through its quick bounds: tens of milliseconds for one unknown action of a large service,
and unknown actions come from traffic. Here the comparison is made in two steps:

1. a shortlist of the `SHORTLIST` actions sharing the most character pairs (bigrams) with
   the unknown one, counted through an index built at start-up (set lookups, no loops over
   characters in Python; the `service.` prefix every action shares is left out, as it
   tells none apart);
2. `difflib.get_close_matches` on the shortlist only.

For a misspelling (a character changed, dropped or added, another verb) the first answer is
difflib's first; the tests compare both on generated misspellings of every service.
"""

from __future__ import annotations

import difflib
import heapq
import os
from collections import Counter
from typing import Dict, Iterable, List

# Actions compared with difflib per unknown action: the cost bound.
SHORTLIST = 8


def _bigrams(text: str) -> frozenset:
    return frozenset(text[i:i + 2] for i in range(len(text) - 1))


class NearestActions:
    """Finds, among one service's declared actions, those closest to an unknown action."""

    def __init__(self, actions: Iterable[str], shortlist: int = SHORTLIST) -> None:
        self.actions = sorted(actions)
        self.shortlist = shortlist
        # Everything up to the last dot all actions share (`service.`).
        shared = os.path.commonprefix(self.actions) if self.actions else ""
        self.prefix = shared[:shared.rfind(".") + 1]
        self._rests = [action[len(self.prefix):] for action in self.actions]
        self._sizes: List[int] = []
        self._postings: Dict[str, List[int]] = {}
        for index, rest in enumerate(self._rests):
            grams = _bigrams(rest)
            self._sizes.append(len(grams))
            for gram in grams:
                self._postings.setdefault(gram, []).append(index)

    def __call__(self, action: str, count: int, cutoff: float) -> List[str]:
        """`difflib.get_close_matches(action, shortlist, count, cutoff)`: up to `count` actions
        whose ratio to `action` is at least `cutoff`, best first."""
        prefix = len(self.prefix) if action.startswith(self.prefix) else 0
        shortlist = [self.actions[index] for index in self._candidates(action[prefix:])]
        return difflib.get_close_matches(action, shortlist, n=count, cutoff=cutoff)

    def _candidates(self, rest: str) -> List[int]:
        """The indexes of the shortlist: the most bigrams shared, relative to both sizes (Dice)."""
        grams = _bigrams(rest)
        shared: Counter = Counter()
        for gram in grams:
            postings = self._postings.get(gram)
            if postings is not None:
                shared.update(postings)
        if len(shared) < self.shortlist:
            # Too few share anything: the rest fill the shortlist in declared order.
            for index in range(len(self.actions)):
                if len(shared) >= self.shortlist:
                    break
                shared.setdefault(index, 0)
        size = len(grams)
        sizes = self._sizes
        # Ties go to the action declared first: `shared` is filled in the order of a set of
        # strings, which differs from process to process, and the message must not.
        return heapq.nlargest(self.shortlist, shared, key=lambda i: (shared[i] / (size + sizes[i] or 1), -i))
