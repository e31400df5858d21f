"""What the API and the worker share: the request's vocabulary, the op registry, shape
inference, the cost model, limits, errors, the queue protocol, the Redis connection and logs.

Plain Python: it imports none of Flask, RQ or TensorFlow (`make lint` holds it to that), so
the API image ships it without the engine.
"""
