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
SIZES = {"small": 0.35, "large": 0.65}  # characteristic radius in metres (CLEVR's 0.35 / 0.7)
