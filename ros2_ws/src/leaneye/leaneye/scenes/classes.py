"""The generated scenes' classes: names from COCO's vocabulary, so COCO-trained teachers map onto ours."""

SCENE_CLASSES = ("car", "truck", "bus", "person", "bicycle", "traffic light")
# COCO category ids of the same names, used as category_id in COCO JSON files.
COCO_IDS = {"person": 1, "bicycle": 2, "car": 3, "bus": 6, "truck": 8, "traffic light": 10}
