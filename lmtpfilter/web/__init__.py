"""`lmtpfilter web`, the quarantine self-service page (issue 19).

app.py (the routes, templates and serving), auth.py (the IMAP password check, the rate
limiter, CSRF), access.py (who may see, release and delete what), preview.py (what the detail
view shows of a message), links.py (release links in notifications), settings.py (a user's
spam destiny). Only links.py is imported by the filter itself; the rest needs the web
framework and runs in its own process.
"""
