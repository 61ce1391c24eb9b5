"""Teachers: classifiers trained on a dataset's real training split or loaded from released weights
(`classifier`), and RDED's released teacher files (`rded`).
"""
