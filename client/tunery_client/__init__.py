"""The tenant-facing side of Tunery: the `tunery` CLI and the one-command demo.

It talks to the API over HTTP only; it never imports Django, Celery or the control plane."""
