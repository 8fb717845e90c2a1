"""Evaluation: the table of `fourm evaluate` (:mod:`~fourm.eval.evaluate`), its measures (:mod:`~fourm.eval.metrics`)
and retrieval recall (:mod:`~fourm.eval.retrieval`)."""
