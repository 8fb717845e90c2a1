"""Pictures: a renderer per corpus modality, grids of them, and one corpus sample at a glance (``fourm show``)."""

# the renderers of fourm.viz.plots register themselves beside render.py's: whoever imports either
# module (through this package) finds every renderer, and neither module imports the other's users
from fourm.viz import plots as _plots  # noqa: E402, F401
