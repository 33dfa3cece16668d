"""The web UI under ``/ui``: server-rendered pages (Jinja2 templates + a little vanilla JavaScript)."""
