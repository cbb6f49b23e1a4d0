"""The model side: architectures, weight loading, the runner that batches a step's
inputs and the sampler.
"""
