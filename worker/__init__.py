"""The worker: the RQ worker, its TensorFlow process and the engine that runs graphs in it.

Importing `worker` never imports TensorFlow; only `worker.engine` and the TensorFlow process do.
"""
