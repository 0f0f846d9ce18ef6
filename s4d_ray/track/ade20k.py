"""ADE20K labels (151 with 0 = background) as the Stereo4D drift filter uses them."""

from __future__ import annotations

LABEL_NAMES = (
    "background", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain",
    "plant", "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool", "pillow", "screen", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen", "computer", "swivel", "boat", "bar", "arcade", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television", "airplane",
    "dirt", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer", "canopy", "washer", "plaything",
    "swimming", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen2", "blanket", "sculpture", "hood", "sconce", "vase", "traffic",
    "tray", "ashcan", "fan", "pier", "crt", "plate", "monitor", "bulletin", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip
"""ADE20K label names by id as the Stereo4D reference lists them (first word of each class)."""

STATIC_LABEL_NAMES = ("wall", "building", "road", "sidewalk", "earth")
SKY_LABEL_NAMES = ("sky",)
STATIC_LABELS = tuple(sorted(LABEL_NAMES.index(name) for name in STATIC_LABEL_NAMES))
"""(1, 2, 7, 12, 14): wall, building, road, sidewalk, earth."""
SKY_LABELS = tuple(LABEL_NAMES.index(name) for name in SKY_LABEL_NAMES)
"""(3,): sky."""
