"""Series a scene adds when asked (``Scenes(series=[scene_graph, table])``): its objects as structured data.

Both are read off the scene's own 3D description, not its pixels, so they are exact; both cover the
objects the view shows (those with an instance, a box and a place in the caption), left to right in the
image, in the same order as ``det``:

* ``scene_graph``: ``{"nodes": [{"size", "colour", "class"}], "edges": [{"subject", "relation", "object"}]}``,
  one node per object and, for every pair ``i < j`` of nodes, two edges from ``i`` to ``j``: ``left of`` or
  ``right of`` (the objects' centres across the camera's view, camera-frame x) and ``in front of`` or
  ``behind`` (their depths along the optical axis). CLEVR (Johnson et al. 2017,
  https://arxiv.org/abs/1612.06890) relates every pair of objects by the same four words. Objects never
  stand on one another here, so ``on`` never occurs, though the serializer takes any relation words.
* ``table``: one row per object, the columns of :data:`fourm.data.scenes.TABLE_COLUMNS`: class, colour,
  size, the object's centre ``x, y, z`` in the camera frame (metres; x right, y up, z towards the
  viewer), its ``distance`` from the camera, and the ``visible`` share of its silhouette in the frame
  that no other object hides.

They cost no extra ray casts (the renderer already traces every object on its own), so asking for them
leaves the scenes source's speed where it was.
"""

from __future__ import annotations

import numpy as np

from fourm.data.scenes import TABLE_DECIMALS


def _centres(objects: list, camera) -> np.ndarray:
    """Camera-frame centres ``(K, 3)`` of ``objects`` (the middle of each one's height above its footprint)."""
    if not objects:
        return np.zeros((0, 3))
    world = np.concatenate([obj.pos + np.array([[0.0], [obj.dims[1] / 2], [0.0]]) for obj in objects], axis=1)
    return (camera.rot @ (world - camera.eye)).T


def scene_graph(objects: list, visible: list[float], camera) -> dict:
    """The graph of ``objects`` (left to right) from their 3D centres; ``visible`` is unused here."""
    centres = _centres(objects, camera)
    nodes = [{"size": o.size, "colour": o.colour, "class": o.shape} for o in objects]
    edges = []
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            (xi, _, zi), (xj, _, zj) = centres[i], centres[j]
            edges.append({"subject": i, "relation": "left of" if xi < xj else "right of", "object": j})
            # z grows towards the viewer: the larger z is the nearer object
            edges.append({"subject": i, "relation": "in front of" if zi > zj else "behind", "object": j})
    return {"nodes": nodes, "edges": edges}


def table(objects: list, visible: list[float], camera) -> list[dict]:
    """One row per object (left to right), the columns of ``TABLE_COLUMNS``; numbers rounded to
    ``TABLE_DECIMALS`` places (a tenth of a millimetre: far below any binning)."""
    rows = []
    for obj, (x, y, z), share in zip(objects, _centres(objects, camera), visible, strict=True):
        numbers = {"x": x, "y": y, "z": z, "distance": float(np.sqrt(x * x + y * y + z * z)), "visible": share}
        rows.append({"class": obj.shape, "colour": obj.colour, "size": obj.size,
                     **{k: round(float(v), TABLE_DECIMALS) for k, v in numbers.items()}})
    return rows


SERIES = {"scene_graph": scene_graph, "table": table}
