"""Dash viewer of the ASIGN result assets (imputed 3D gene maps, metrics, registrations)."""

from __future__ import annotations

__all__ = ["create_app", "run_viewer"]


def __getattr__(name: str):
    # Lazy: `import dash_app` stays cheap; dash is imported when the app is built.
    if name in __all__:
        from dash_app import app

        return getattr(app, name)
    raise AttributeError(name)
