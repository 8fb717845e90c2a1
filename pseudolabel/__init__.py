"""Pseudo-labelling: sources of raw images, labellers that derive modalities, and the sharded pipeline
that writes an aligned corpus (see :mod:`fourm.data.corpus`)."""
