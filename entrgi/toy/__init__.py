"""The toy world: a small language with an exact oracle, and a dLLM and an RM trained on it.

`oracle.oracle(prompt, response)` is the ground truth; `python -m entrgi.toy.train` builds
the checkpoints shipped in `weights/` that back `experiment=tiny`.
"""
