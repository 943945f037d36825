"""lmtpfilter: an LMTP-stage mail content filter (ClamAV + SpamAssassin, per recipient)."""

__version__ = "0.1.0"
