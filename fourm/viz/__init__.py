"""Pictures: a renderer per corpus modality, grids of them, and one corpus sample at a glance (``fourm show``)."""
