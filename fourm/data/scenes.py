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
