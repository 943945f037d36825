"""SMTP/LMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: the three-digit code, the enhanced code (may be empty) and the text."""

    code: int
    enhanced: str
    text: str
    # Every text line of a multi-line reply (LHLO capabilities); not part of equality.
    lines: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    def line(self) -> str:
        """The reply as one line without CRLF, with an enhanced code whenever it has a class.

        A relayed reply without an enhanced code gets the generic one of its class (X.0.0),
        because we advertise ENHANCEDSTATUSCODES (RFC 2034 §3 requires one on every reply).
        """
        enhanced = self.enhanced or (f"{self.code // 100}.0.0" if self.code >= 200 else "")
        text = self.text.replace("\r", " ").replace("\n", " ")
        return f"{self.code} {enhanced} {text}".rstrip() if enhanced else f"{self.code} {text}"

    def __str__(self) -> str:
        return self.line()

    @classmethod
    def parse_lines(cls, code: int, texts: list[str]) -> Reply:
        """Build a Reply from the texts of a (possibly multi-line) reply, code already split."""
        # RFC 2034 puts the enhanced code on every line; Cyrus's lmtpd puts it on the last
        # line only ("550-Mailbox unknown. ...", "550 5.1.1 User unknown"): take the first
        # line that has one of the reply's class, and strip it from every line.
        enhanced = ""
        for text in texts:
            m = _ENHANCED.match(text)
            if m and m.group(1) == str(code)[0]:
                enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
                break
        shown = [text[len(enhanced):].lstrip(" ") if enhanced and text.startswith(enhanced)
                 else text for text in texts]
        return cls(code, enhanced, "; ".join(t for t in shown if t), tuple(texts))


# The replies lmtpfilter itself gives, in one place so that tests and docs agree.
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message too big for system")
LINE_TOO_LONG = Reply(554, "5.6.0", "Message has a line over 998 octets (RFC 5321 4.5.3.1.6)")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, please try again later")
DOWNSTREAM_UNAVAILABLE = Reply(451, "4.4.1", "Downstream delivery server unavailable")
DOWNSTREAM_LOST = Reply(451, "4.4.2", "Connection to downstream delivery server lost")
DOWNSTREAM_TIMEOUT = Reply(451, "4.4.7", "Downstream delivery server timed out")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, please try again later")
