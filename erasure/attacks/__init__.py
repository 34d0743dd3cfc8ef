"""Prompt attacks against a (possibly erased) pipeline, and the attack success rate.

  * soft.py: the continuous soft-prompt attack (AdvUnlearn's inner loop);
  * discrete.py: the UnlearnDiffAtk-style discrete token attack;
  * asr.py: pre-ASR and ASR over a prompt set, judged by judges.py (never by the attack's loss).
"""
