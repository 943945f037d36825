"""lmtpfilter-janitor: keeps the quarantine within its budget and the verdict store bounded."""
