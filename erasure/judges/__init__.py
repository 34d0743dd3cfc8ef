"""Judges decide what is in an image. Used by evaluation and by attacks, so they sit below both."""
