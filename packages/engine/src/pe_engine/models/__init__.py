"""The model side: architectures, weight loading, the runner with its step inputs
(``batch``) and KV pool (``kv_cache``), and the sampler.
"""
