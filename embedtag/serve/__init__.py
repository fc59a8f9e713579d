"""``embedtag serve``: a tagging and similar-sound web service with a page in the browser.

::

    from embedtag.serve import create_app
    app = create_app(head="heads/office", index="indexes/office")    # a FastAPI app; serve it with uvicorn
    # or: embedtag serve --head heads/office --index indexes/office

Routes: ``POST /v1/tag``, ``POST /v1/search``, ``GET /v1/clips/{clip_id}/audio``, ``GET /v1/info``, ``/healthz``,
``/metrics`` (Prometheus), ``/docs`` (OpenAPI) and the page at ``/``. Needs the ``serve`` extra
(``pip install 'embedtag[serve]'``).
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """See :func:`embedtag.serve.app.create_app`."""
    try:
        from embedtag.serve.app import create_app as _create
    except ImportError as exc:
        from embedtag.errors import EmbedtagError

        raise EmbedtagError(f"embedtag serve needs an optional dependency ({exc.name or exc}); install it with: "
                            "pip install 'embedtag[serve]'") from None
    return _create(*args, **kwargs)


__all__ = ["create_app"]
