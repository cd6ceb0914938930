"""Generated token ids -> the text a client sees, incrementally: detokenization that never splits a character,
stop strings (the text ends before the first one), and the split of a chat reply into `reasoning_content` (inside
`<think>…</think>`) and `content`.

    text = TextStream(tokenizer, stop=["\\n\\n"])
    delta = text.update(all_generated_ids)   # the new text that is safe to send (stop strings held back)
    text.stopped                             # a stop string was found: the request can be cancelled
    delta = text.finish()                    # what is left when the request ends
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _held(text: str, needles: list[str]) -> int:
    """How many trailing characters of text could start one of the needles (to hold back while streaming)."""
    hold = 0
    for needle in needles:
        for k in range(min(len(needle) - 1, len(text)), hold, -1):
            if text.endswith(needle[:k]):
                hold = k
                break
    return hold


class TextStream:
    """The text of one choice as its tokens arrive (decoded with skip_special_tokens, as `dk.generate` does).
    `tokens`: how many generated tokens the text covers (up to the one that completed a stop string)."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer, self.stop = tokenizer, list(stop or [])
        self.text = ""  # the final text so far (cut at a stop string)
        self.sent = 0  # characters of self.text handed out
        self.tokens = 0
        self.stopped = False

    def update(self, ids: list[int]) -> str:
        """All generated ids so far -> the new text that is safe to send."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        self.tokens = len(ids)
        for stop in self.stop:
            at = text.find(stop)
            if at >= 0 and (not self.stopped or at < len(self.text)):
                self.text, self.stopped = text[:at], True
        if self.stopped:
            return self._take(len(self.text))
        self.text = text
        safe = len(text) - _held(text, self.stop)
        if safe and text[safe - 1] == "\ufffd":  # an incomplete multi-byte character: wait for its next token
            safe -= 1
        return self._take(safe)

    def finish(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        upto = max(upto, self.sent)
        delta, self.sent = self.text[self.sent : upto], upto
        return delta


class ReasoningSplit:
    """Splits a chat reply's text deltas into (reasoning, content) deltas: text inside a leading `<think>…</think>`
    (or before `</think>` when the chat template already opened the block in the prompt) is reasoning."""

    def __init__(self, opened_in_prompt: bool = False):
        self.state = "reasoning" if opened_in_prompt else "start"
        self.pending = ""

    def feed(self, delta: str, final: bool = False) -> tuple[str, str]:
        text = self.pending + delta
        self.pending = ""
        reasoning = content = ""
        if self.state == "start":
            stripped = text.lstrip()
            if stripped.startswith(THINK_OPEN):
                self.state, text = "reasoning", stripped[len(THINK_OPEN) :]
            elif not final and (THINK_OPEN.startswith(stripped)):
                self.pending = text  # could still become "<think>"
                return "", ""
            else:
                self.state = "content"
        if self.state == "reasoning":
            at = text.find(THINK_CLOSE)
            if at >= 0:
                reasoning, text, self.state = text[:at], text[at + len(THINK_CLOSE) :], "content"
            else:
                hold = 0 if final else _held(text, [THINK_CLOSE])
                reasoning, self.pending = text[: len(text) - hold], text[len(text) - hold :]
                return reasoning, ""
        content = text
        return reasoning, content


def split_reasoning(text: str, opened_in_prompt: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, content) of a whole reply."""
    reasoning, content = ReasoningSplit(opened_in_prompt).feed(text, final=True)
    found = opened_in_prompt or text.lstrip().startswith(THINK_OPEN)
    return (reasoning.strip() if found else None), content
