"""Labellers: each turns some modalities of a sample into others (see :class:`base.Labeller`)."""
