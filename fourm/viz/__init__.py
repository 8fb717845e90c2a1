"""Pictures: a renderer per corpus modality, grids of them, and one corpus sample at a glance (``fourm show``)."""

# the renderers of fourm.viz.plots and fourm.viz.structured register themselves beside render.py's: whoever
# imports any of these modules (through this package) finds every renderer, and none imports the others' users
from fourm.viz import plots as _plots  # noqa: E402, F401
from fourm.viz import structured as _structured  # noqa: E402, F401
