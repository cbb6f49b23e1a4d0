"""The engine's core: sequences, the paged block manager, the scheduler and the
incremental detokenizer. Nothing here imports model code.
"""
