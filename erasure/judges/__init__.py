"""Judges decide what is in an image. Used by evaluation and by attacks, so they sit below both.

  * minisd.py: the bundled MiniSD classifier (object, colour, style) and its label vocabulary;
  * nudenet.py: NudeNet's detector and the rule that calls an image nude (DEFAULT_THRESHOLD);
  * clip.py: CLIP loaded from local files (the clip_score metric and the zero-shot judge);
  * clip_zero_shot.py: the CLIP zero-shot judge among a few label texts.
"""
