"""Constrained decoding: grammars compiled by llguidance, one matcher per sequence, one token
bitmask per step applied to the logits before sampling."""
