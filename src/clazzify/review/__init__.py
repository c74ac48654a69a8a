"""The moderators' review web app: queues of photos in a browser, one key per decision.

- :mod:`.queues`: the queues, counts, stats and export as SQL on the scores database;
- :mod:`.users`: accounts with argon2 password hashes;
- :mod:`.thumbs`: thumbnails read through :mod:`clazzify.core.storage`, resized and cached;
- :mod:`.app`: the Starlette app (Jinja2 templates, htmx, signed session cookies, CSRF).

`clazzify review-ui --db URL` serves it; docs/review.md explains it.
"""
