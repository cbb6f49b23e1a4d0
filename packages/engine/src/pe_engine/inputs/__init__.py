"""Prompt inputs: text / token ids / embeds prompts and chat messages rendered by the
model's template (with the sandboxed render pool).
"""
