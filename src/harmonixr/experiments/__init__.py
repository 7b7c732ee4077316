"""Experiments: jobs of several training runs over one cache, above training and evaluation.

A job is a folder holding its record (the cache, the plan, the recipe) and one run directory
per split of the plan: a fold of a cross-validation (``cv``) or a held-out source
(``loso``). A job trains each split's run (``train.run.train``), embeds its pieces with it, and
hands the embeddings to the evaluation engine (``evaluate.protocols``) as sides. A killed job
resumes split by split; a split's training resumes from its last checkpoint.
"""
