"""The side-by-side benchmark of issue 5: `python -m bench` (or `make bench`).

(a) hand-written TensorFlow, (b) the engine in process, (c) the service over HTTP and
(d) the naive Flask app, on the same workloads in the same minutes; see bench/__main__.py.
"""
