"""The TensorFlow side of tapeserve: the engine, the op registry and the RQ worker.

Importing `worker` or `worker.graph` never imports TensorFlow; only `worker.engine` does.
"""
