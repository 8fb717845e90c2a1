"""What the built-in procedural scenes are made of: their classes, shapes, colours and sizes.

Defined here, in the core, because two sides need the same words: the renderer
(``pseudolabel.sources.scenes``) draws and captions scenes with them, and the evaluation
(``fourm.eval.metrics``) judges generated captions and images by them. The core must not import its
users, so the renderer imports these, not the other way round.
"""

CLASSES = ["background", "ground", "sphere", "cube", "cylinder", "cone"]
SHAPES = CLASSES[2:]
COLOURS = {  # sRGB, saturated so they read apart from the neutral ground and from each other
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (130, 50, 190),
    "orange": (240, 125, 30),
    "cyan": (40, 195, 200),
    "white": (235, 235, 235),
}
# Characteristic radius in metres. CLEVR's 0.35 / 0.7 made objects 12 px across and 9% of a 64 px
# image; at 0.56 / 1.04 they are 20 px and 23% (2.3 visible objects a scene instead of 2.5). On RGB ->
# object words (a nano FourM, 1500 steps of fresh scenes) the colour words' held-out nll fell from
# 0.97 to 0.66 and the sizes' from 0.80 to 0.70: the larger objects give a patch something to carry.
SIZES = {"small": 0.56, "large": 1.04}

# The scenes' table (`series=[table]`, pseudolabel.sources.scene_structure): one row per visible object.
# Word columns map to None; number columns to the range their values are binned over (the tokenizer's
# default table schema), with room around what 3000 scenes (6902 objects) spanned: x [-1.96, 1.94],
# y [-1.08, 1.81], z [-7.42, -2.30] m, distance [2.31, 7.53] m, visible [0.012, 1]. Values outside are clipped.
TABLE_COLUMNS: dict[str, tuple[float, float] | None] = {
    "class": None, "colour": None, "size": None,
    "x": (-3.0, 3.0), "y": (-2.0, 2.0), "z": (-9.0, -1.0), "distance": (1.0, 9.0), "visible": (0.0, 1.0),
}
TABLE_DECIMALS = 4  # places the corpus keeps of each number: 0.1 mm, far below any binning
