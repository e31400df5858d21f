"""The tapeserve HTTP API: validates graphs, queues them on RQ, answers with results.

This package never imports TensorFlow (a test holds it to that).
"""

from .app import create_app

__all__ = ["create_app"]
