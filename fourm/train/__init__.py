"""Training: one loop (:func:`loop.train`) for every task, tokenizers and FourM alike."""
