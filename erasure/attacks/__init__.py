"""Prompt attacks against a (possibly erased) pipeline: the algorithms only (their success rate
is a measurement: erasure/eval/asr.py).

  * soft.py: the continuous soft-prompt attack (AdvUnlearn's inner loop);
  * discrete.py: the UnlearnDiffAtk-style discrete token attack;
  * ring_a_bell.py: Ring-A-Bell's concept-vector prompts;
  * text.py: prompt encoding with free token embeddings.
"""
